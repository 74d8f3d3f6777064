// @dsv3/core: Tensors, dtypes, the shared CPU/WebGPU backend interface, autograd, nn, optim, safetensors.
// Not built yet: this package exports nothing until its issue lands.
export {};
