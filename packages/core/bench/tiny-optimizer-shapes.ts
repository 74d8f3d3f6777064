// The tiny preset's optimizer workload, shared by the AdamW benches: its 1,251,168 f32 weights as tensors
// of the preset's kinds (embedding and head 258 x 128, projections, experts; 6K–49K elements), cycled, and
// the AdamW constants of a step late in warm-up.
import type { AdamWKernelAttrs } from '../src/optim/adamw.js';

const TINY_WEIGHTS = 1_251_168;
const SIZES = [33024, 33024, 49152, 49152, 40960, 40960, 40960, 24576, 16384, 16384, 12288, 12288, 6144];

/** Tensor sizes summing to the tiny preset's weight count; `smallTensors` of them 128 long (norms, biases). */
export function tinyTensorSizes(smallTensors = 0): number[] {
  const large = TINY_WEIGHTS - smallTensors * 128;
  const sizes: number[] = [];
  for (let total = 0; total < large; ) {
    const n = Math.min(SIZES[sizes.length % SIZES.length]!, large - total);
    sizes.push(n);
    total += n;
  }
  for (let i = 0; i < smallTensors; i++) sizes.push(128);
  return sizes;
}

export function tinyAdamWAttrs(stateDType: AdamWKernelAttrs['stateDType']): AdamWKernelAttrs {
  return { b1: 0.9, b2: 0.95, c1: 0.271, c2: 0.1426, eps: 1e-8, lr: 1e-4, decay: 1 - 1e-5, stateDType };
}
