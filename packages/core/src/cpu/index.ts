// Registers the CPU kernels of the primitive set.
import { registerKernel, type Kernel } from '../backend.js';
import type { KernelAttrs, PrimitiveOp } from '../kernel-types.js';
import { binaryKernel, castKernel, unaryKernel, whereKernel } from './elementwise.js';
import {
  concatKernel,
  cumsumKernel,
  fullKernel,
  gatherKernel,
  iotaKernel,
  padKernel,
  scatterAddKernel,
  scatterAlongKernel,
  stridedKernel,
  takeAlongKernel,
  topkKernel,
} from './indexing.js';
import { matmulKernel } from './matmul.js';
import { reduceKernel, rmsnormKernel, softmaxKernel } from './reduce.js';

export { cpu, CpuBackend, CpuStorage } from './backend.js';
export { planMatmul } from './matmul.js';
export { gemmInfo, setGemmThreads, weightProduct, type WeightProductArgs } from './gemm/index.js';

const kernels: { [K in PrimitiveOp]: Kernel<KernelAttrs[K]> } = {
  unary: unaryKernel,
  binary: binaryKernel,
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
  strided: stridedKernel,
  pad: padKernel,
  concat: concatKernel,
  topk: topkKernel,
  cumsum: cumsumKernel,
  full: fullKernel,
  iota: iotaKernel,
};
for (const [op, k] of Object.entries(kernels)) registerKernel(op, 'cpu', k as Kernel);
