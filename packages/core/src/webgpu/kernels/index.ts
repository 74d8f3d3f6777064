// Registers the WebGPU kernels of the whole primitive set under the backend name 'webgpu'.
import { registerKernel, type Kernel } from '../../backend.js';
import type { KernelAttrs, PrimitiveOp } from '../../kernel-types.js';
import { ADAMW_OP } from '../../optim/adamw.js';
import { adamwKernel } from './adamw.js';
import { binaryKernel, castKernel, fullKernel, iotaKernel, unaryKernel, whereKernel } from './elementwise.js';
import { matmulKernel } from './matmul.js';
import { concatKernel, gatherKernel, padKernel, stridedKernel, takeAlongKernel } from './movement.js';
import { cumsumKernel, reduceKernel, rmsnormKernel, softmaxKernel, topkKernel } from './reduce.js';
import { scatterAddKernel, scatterAlongKernel } from './scatter.js';

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

for (const [op, k] of Object.entries(kernels)) registerKernel(op, 'webgpu', k as Kernel);
registerKernel(ADAMW_OP, 'webgpu', adamwKernel);
