// Registers this package's kernels (device sampling and speculative verification) in @dsv3/core's registry, once, when the package is
// loaded (device-sampler.ts and index.ts import this file for its side effect).
import { registerKernel } from '@dsv3/core';
import { sampleCpu } from './sample-kernel-cpu.js';
import { sampleWebGpu } from './sample-kernel-webgpu.js';
import { verifyCpu } from './verify-kernel-cpu.js';
import { verifyWebGpu } from './verify-kernel-webgpu.js';

/** logits [B, V] + per-row settings → token ids [B] (see device-sampler.ts) */
export const SAMPLE_OP = 'mtp.sample';

registerKernel(SAMPLE_OP, 'cpu', sampleCpu);
registerKernel(SAMPLE_OP, 'webgpu', sampleWebGpu);

/** target + draft logits, drafts and settings → (accepted, next) per sequence (see device-verify.ts) */
export const VERIFY_OP = 'mtp.verify';

registerKernel(VERIFY_OP, 'cpu', verifyCpu);
registerKernel(VERIFY_OP, 'webgpu', verifyWebGpu);
