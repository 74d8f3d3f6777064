// The WebGPU versions of the fused training kernels against the CPU's (same contracts), on ragged
// shapes: rows of two elements (one cancels dx exactly: 1 - x²/(x² + eps)), rows shorter and longer than a workgroup.
import { afterAll, describe, it } from 'vitest';
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
});
