// @dsv3/fp8: FP8 E4M3/E5M2 codecs, fine-grained quantization, block-scaled GEMM, and an emulation of
// the tensor cores' limited accumulation precision on plain TypedArrays; on top of them, a Tensor
// API dispatched through @dsv3/core's kernel registry (CPU and WebGPU kernels) and FP8Linear.
export * from './codec/index';
export * from './quant';
export * from './gemm';
export * from './accum';
export * from './accum-study';
export * from './tensor/ops';
export { FP8_OPS, type QuantAttrs, type DequantAttrs, type GemmAttrs } from './tensor/attrs';
export * from './linear';
export { checkFp8Errors, enableFp8SubgroupMatrix, setFp8GemmOptions, type GemmRunOptions, type GemmTile } from './webgpu/kernels';
