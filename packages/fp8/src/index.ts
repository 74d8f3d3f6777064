// @dsv3/fp8: FP8 E4M3/E5M2 codecs, fine-grained quantization, block-scaled GEMM, and an emulation of
// the tensor cores' limited accumulation precision on plain TypedArrays; on top of them, a Tensor
// API dispatched through @dsv3/core's kernel registry (CPU and WebGPU kernels) and FP8Linear.
// Importing the package registers its kernels (register.ts).
import './register';

export * from './codec/index';
export {
  quantizeActivation,
  dequantizeActivation,
  quantizeWeight,
  dequantizeWeight,
  quantizeActivationColumnwise,
  dequantizeActivationColumnwise,
  quantizeActivationTransposed,
  requantizeColumnwise,
  activationScale,
  weightScale,
  ue8m0Ceil,
  transpose2d,
  type ScaleFormat,
  type QuantizeOptions,
  type Quantized,
} from './quant';
export {
  fp8GemmBlockScaled,
  dequantizeGemmOperands,
  scaleRows,
  gemmF32NT,
  type SlabGemm,
  type BScaleLayout,
  type Fp8GemmOptions,
} from './gemm';
export { LimitedAccumulator, fp8GemmEmulated, type AccumulatorOptions } from './accum';
export {
  accumulationStudy,
  exactBlockScaledProduct,
  type AccumulationStudyOptions,
  type AccumulationStudyResult,
} from './accum-study';
export * from './tensor/ops';
export * from './linear';
export { FP8_OPS, type QuantAttrs, type DequantAttrs, type GemmAttrs, type GroupedGemmAttrs } from './tensor/attrs';
export {
  checkFp8Errors,
  enableFp8SubgroupMatrix,
  newDeviceStackCache,
  stackOnDevice,
  type DeviceStack,
  type DeviceStackCache,
  type GemmRunOptions,
  type GemmTile,
} from './webgpu/kernels';
