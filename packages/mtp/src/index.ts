// @dsv3/mtp: Multi-token prediction modules, loss and speculative decoding.
// Not built yet: this package exports nothing until its issue lands.
export {};
