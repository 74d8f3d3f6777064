// @dsv3/fp8: FP8 E4M3/E5M2 codecs, fine-grained quantization, block-scaled GEMM, FP8 linear layers.
// Not built yet: this package exports nothing until its issue lands.
export {};
