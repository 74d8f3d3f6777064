// @dsv3/core: tensors, dtypes, the shared backend interface (CPU here; WebGPU via @dsv3/core/node or
// a browser adapter), autograd, nn, optim, safetensors and a seeded RNG.
import './cpu/index.js';

export * from './dtype.js';
export * from './shape.js';
export * from './backend.js';
export type { KernelAttrs, PrimitiveOp, UnaryOp, BinaryOp, ReduceOp } from './kernel-types.js';
export { UNARY_OPS, ARITH_OPS, COMPARE_OPS } from './kernel-types.js';
export { defaultBackend, setDefaultBackend } from './backends.js';
export {
  cpu,
  CpuBackend,
  CpuStorage,
  fp8NaNIndex,
  quantizeE4M3TilesNative,
  trimNativeHeap,
  gemmInfo,
  latentAttention,
  type LatentAttentionArgs,
  type LatentSequence,
  planMatmul,
  expF32,
  firstMaxIndexF32,
  swigluF32,
  siluInto,
  swigluBackwardF32,
  setAttentionScoreBudget,
  setGemmThreads,
  setPrefillActivations,
  sgemm,
  sgemmDeferred,
  sgemmMany,
  type GemmArgs,
  takeF32,
  setPoisonRecycled,
  setResidentOutputBudget,
  residentOutputStats,
  keptOnHost,
  releasingStepOutputs,
  type StepOutputsOptions,
  F32WorkArrays,
  MLP_WORK_BYTES,
  holdYoungGeneration,
  tierUpSooner,
  isResident,
  combineRowsResident,
  gatherRowsResident,
  combineBackwardResident,
  addInto,
  mulInto,
  scaleInto,
  sumOfSquares,
  vectorExpAvailable,
  weightProduct,
  argmaxProduct,
  weightProducts,
  type WeightProductArgs,
} from './cpu/index.js';
export { Tensor } from './tensor.js';
export {
  backward,
  backwardContributions,
  topoOrder,
  noGrad,
  noGradAsync,
  withGrad,
  isGradEnabled,
  record,
  ownsGrad,
  onlyAccumulatesGrad,
  scaleGrad,
  dropGrad,
  moveGrad,
  accumulateGrad,
  type GradNode,
} from './autograd.js';
export {
  recyclingScope,
  recyclingScopeAsync,
  recyclingScopeTotals,
  type RecyclingScopeOptions,
} from './recycling-scope.js';
export { cpuData, keepGradientIn, keptGradient, gradIsKept, type GradientArray } from './kept-grads.js';
export * from './ops/index.js';
export { exec, exec1 } from './ops/exec.js';
export { Rng } from './rng.js';
export * from './io/index.js';
export { loadSafetensors, loadCheckpoint, saveSafetensors, type LoadTensorsOptions } from './io/tensors.js';
export * from './nn/index.js';
export * from './optim/index.js';
export * from './webgpu/index.js';
