// Registers the CPU kernels of the primitive set.
import { registerKernel, type Kernel } from '../backend.js';
import type { KernelAttrs, PrimitiveOp } from '../kernel-types.js';
import { castKernel, whereKernel } from './elementwise.js';
import {
  concatKernel,
  cumsumKernel,
  gatherKernel,
  scatterAddKernel,
  scatterAlongKernel,
  takeAlongKernel,
  topkKernel,
} from './indexing.js';
import {
  binaryKernelFast,
  fullKernelFast,
  iotaKernelFast,
  padKernelFast,
  stridedKernelFast,
  unaryKernelFast,
} from './fast-paths.js';
import { causalAttentionBackwardKernel, causalAttentionKernel } from './attention-kernels.js';
import { matmulGradsKernel, matmulKernel } from './matmul.js';
import { ropeAttentionBackwardKernel, ropeAttentionKernel } from './rope-attention-kernels.js';
import { reduceKernel, rmsnormKernel, softmaxKernel } from './reduce.js';
import {
  adamwInPlaceKernel,
  adamwManyKernel,
  toResidentKernel,
  sumSquaresManyKernel,
  addInPlaceKernel,
  scaleInPlaceKernel,
  adamwKernel,
  causalSoftmaxKernel,
  crossEntropyBackwardKernel,
  crossEntropyKernel,
  rmsnormBackwardKernel,
  ropeKernel,
  siluBackwardKernel,
  softmaxBackwardKernel,
  sumSquaresKernel,
} from './train-kernels.js';

export { cpu, CpuBackend, CpuStorage } from './backend.js';
export { setAttentionScoreBudget } from './attention-kernels.js';
export { planMatmul } from './matmul.js';
export { setPoisonRecycled, takeF32 } from './pool.js';
export { residentOutputStats, setResidentOutputBudget } from './resident-outputs.js';
export { keptOnHost, releasingStepOutputs, type StepOutputsOptions } from './step-outputs.js';
export { F32WorkArrays, MLP_WORK_BYTES } from './work-arrays.js';
export { holdYoungGeneration } from './young-generation.js';
export { tierUpSooner } from './tier-up.js';
export { combineRowsResident } from './combine-rows-simd.js';
export { gatherRowsResident } from './gather-rows-simd.js';
export { combineBackwardResident } from './combine-backward-simd.js';
export { addInto, mulInto, scaleInto, sumOfSquares } from './train-kernels.js';
export { expF32, vectorExpAvailable } from './vector-exp.js';
export { firstMaxIndexF32 } from './argmax-simd.js';
export { siluInto, swigluBackwardF32, swigluF32 } from './gated-simd.js';
export { latentAttention, type LatentAttentionArgs, type LatentSequence } from './gemm/latent-attention.js';
export {
  fp8NaNIndex,
  gemmInfo,
  isResident,
  quantizeE4M3TilesNative,
  trimNativeHeap,
  setGemmThreads,
  setPrefillActivations,
  sgemm,
  sgemmDeferred,
  sgemmMany,
  type GemmArgs,
  weightProduct,
  argmaxProduct,
  weightProducts,
  type WeightProductArgs,
} from './gemm/index.js';

const kernels: { [K in PrimitiveOp]: Kernel<KernelAttrs[K]> } = {
  unary: unaryKernelFast,
  binary: binaryKernelFast,
  where: whereKernel,
  cast: castKernel,
  reduce: reduceKernel,
  matmul: matmulKernel,
  softmax: softmaxKernel,
  rmsnorm: rmsnormKernel,
  gather: gatherKernel,
  scatterAdd: scatterAddKernel,
  takeAlong: takeAlongKernel,
  scatterAlong: scatterAlongKernel,
  strided: stridedKernelFast,
  pad: padKernelFast,
  concat: concatKernel,
  topk: topkKernel,
  cumsum: cumsumKernel,
  full: fullKernelFast,
  iota: iotaKernelFast,
};
for (const [op, k] of Object.entries(kernels)) registerKernel(op, 'cpu', k as Kernel);

// Fused training kernels (their ops fall back to composed primitives where a backend has none).
const trainKernels: Record<string, Kernel> = {
  adamw: adamwKernel,
  adamwInPlace: adamwInPlaceKernel,
  adamwMany: adamwManyKernel,
  toResident: toResidentKernel,
  matmulGrads: matmulGradsKernel,
  addInPlace: addInPlaceKernel,
  scaleInPlace: scaleInPlaceKernel,
  sumSquares: sumSquaresKernel,
  sumSquaresMany: sumSquaresManyKernel,
  rmsnormBackward: rmsnormBackwardKernel,
  softmaxBackward: softmaxBackwardKernel,
  siluBackward: siluBackwardKernel,
  causalSoftmax: causalSoftmaxKernel,
  rope: ropeKernel,
  crossEntropy: crossEntropyKernel,
  crossEntropyBackward: crossEntropyBackwardKernel,
  causalAttention: causalAttentionKernel,
  causalAttentionBackward: causalAttentionBackwardKernel,
  ropeAttention: ropeAttentionKernel,
  ropeAttentionBackward: ropeAttentionBackwardKernel,
};
for (const [op, k] of Object.entries(trainKernels)) registerKernel(op, 'cpu', k);
