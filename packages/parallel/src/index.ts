// @dsv3/parallel: Collectives, expert/pipeline/data parallelism, cluster cost model.
// Not built yet: this package exports nothing until its issue lands.
export {};
