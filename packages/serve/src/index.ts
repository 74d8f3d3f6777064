// @dsv3/serve: Inference serving: scheduler, prefill/decode, expert parallelism.
// Not built yet: this package exports nothing until its issue lands.
export {};
