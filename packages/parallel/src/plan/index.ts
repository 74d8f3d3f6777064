export * from './cluster.js';
export * from './layout.js';
export * from './memory.js';
export * from './traffic.js';
export * from './train.js';
export * from './serve.js';
export * from './v3.js';
export * from './report.js';
