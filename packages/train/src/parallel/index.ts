export * from './step.js';
export * from './p2p.js';
export * from './stages.js';
export * from './session.js';
export * from './shard.js';
export * from './checkpoint.js';
export * from './eval.js';
