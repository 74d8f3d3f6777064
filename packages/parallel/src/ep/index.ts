export * from './autograd.js';
export * from './alltoall.js';
export * from './placement.js';
export * from './moe.js';
export * from './owned.js';
export * from './hierarchical.js';
export * from './streams.js';
