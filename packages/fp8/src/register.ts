// Registers this package's kernels in @dsv3/core's registry, once, when the package is loaded: every
// module that runs them imports this file for its side effect (so does index.ts). The kernels only
// run when called.
import { registerKernel } from '@dsv3/core';
import { FP8_CPU_KERNELS } from './tensor/cpu';
import { FP8_WEBGPU_KERNELS } from './webgpu/kernels';

for (const [op, kernel] of Object.entries(FP8_CPU_KERNELS)) registerKernel(op, 'cpu', kernel);
for (const [op, kernel] of Object.entries(FP8_WEBGPU_KERNELS)) registerKernel(op, 'webgpu', kernel);
