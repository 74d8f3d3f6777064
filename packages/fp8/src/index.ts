// @dsv3/fp8: FP8 E4M3/E5M2 codecs, fine-grained quantization, block-scaled GEMM, and an emulation of
// the tensor cores' limited accumulation precision. Plain TypedArrays + shapes in, TypedArrays out.
export * from './codec/index';
export * from './quant';
export * from './gemm';
export * from './accum';
export * from './accum-study';
