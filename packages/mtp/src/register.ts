// Registers this package's kernel (device sampling) in @dsv3/core's registry, once, when the package is
// loaded (device-sampler.ts and index.ts import this file for its side effect).
import { registerKernel } from '@dsv3/core';
import { sampleCpu } from './sample-kernel-cpu.js';
import { sampleWebGpu } from './sample-kernel-webgpu.js';

/** logits [B, V] + per-row settings → token ids [B] (see device-sampler.ts) */
export const SAMPLE_OP = 'mtp.sample';

registerKernel(SAMPLE_OP, 'cpu', sampleCpu);
registerKernel(SAMPLE_OP, 'webgpu', sampleWebGpu);
