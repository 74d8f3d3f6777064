export * from './creation.js';
export * from './elementwise.js';
export * from './reduce.js';
export * from './shape-ops.js';
export * from './indexing.js';
export * from './linalg.js';
export * from './nn.js';
export { startOpProfile, stopOpProfile, type OpTiming } from './profile.js';
export * from './rope.js';
