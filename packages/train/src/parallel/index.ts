export * from './step.js';
export * from './p2p.js';
export * from './stages.js';
export * from './session.js';
