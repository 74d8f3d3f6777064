// @dsv3/mla: Multi-head latent attention: training and absorbed forms, YaRN RoPE, paged latent cache.
// Not built yet: this package exports nothing until its issue lands.
export {};
