export * from './zero1.js';
export * from './checkpoint.js';
