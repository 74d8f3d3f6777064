// The WebGPU versions of the fused training kernels against the CPU's (same contracts), on ragged
// shapes: rows of two elements (one cancels dx exactly: 1 - x²/(x² + eps)), rows shorter and longer than a workgroup.
import { afterAll, describe, it } from 'vitest';
import { cpu } from '../../src/index.js';
import { exec1 } from '../../src/ops/exec.js';
import { acquireGpu, compareOp, cpuT, rnd } from './gpu.js';

const gpu = await acquireGpu();
afterAll(() => gpu?.dispose());

const f = (shape: number[], seed: number) =>
  cpuT(
    'f32',
    shape,
    rnd(
      shape.reduce((a, b) => a * b, 1),
      seed,
    ),
  );

describe.skipIf(!gpu)('fused training kernels on WebGPU vs the CPU', () => {
  it('rmsnormBackward [x, w, g] → [dx, dw]', async () => {
    let seed = 1;
    for (const shape of [
      [1, 2],
      [3, 7],
      [2, 5, 300],
      [33, 64],
    ]) {
      const n = shape.at(-1)!;
      await compareOp(gpu!, 'rmsnormBackward', [f(shape, seed++), f([n], seed++), f(shape, seed++)], { eps: 1e-6 });
    }
  });

  it('siluBackward [x, g] → [dx]', async () => {
    for (const shape of [[1], [3, 7], [2, 1025]])
      await compareOp(gpu!, 'siluBackward', [f(shape, 20), f(shape, 21)], {});
  });

  it('softmaxBackward [y, g] → [dx], softmax and log-softmax', async () => {
    let seed = 30;
    for (const log of [false, true])
      for (const shape of [
        [1, 1],
        [3, 7],
        [2, 5, 300],
      ]) {
        // y: a real (log-)softmax output, so the row sums mean what they do in training
        const y = exec1('softmax', [f(shape, seed++)], { log }, cpu);
        await compareOp(gpu!, 'softmaxBackward', [y, f(shape, seed++)], { log });
      }
  });
});
