// @dsv3/parallel: Collectives, expert/pipeline/data parallelism, cluster cost model.
export * from './pipeline/index.js';
export * from './plan/index.js';
