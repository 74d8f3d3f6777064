// RMSNorm's CPU kernels, which take two rows at a time, equal the one-row-at-a-time loops they replaced
// bit for bit (forward, dx and dw; f32 and f64; odd row counts, rows of 1 and of ragged widths, empty),
// the f32 forward and backward through rmsnorm-simd.ts's kernels (several trips through its memory) as well.
import { describe, it } from 'vitest';
import type { KernelTensor } from '../src/backend.js';
import { CpuStorage } from '../src/cpu/backend.js';
import { rmsnormKernel } from '../src/cpu/reduce.js';
import { rmsnormBackwardKernel } from '../src/cpu/train-kernels.js';
import { cpu, Rng } from '../src/index.js';
import { expectSameBits } from '../src/testing.js';

type F = Float32Array | Float64Array;

/** The forward kernel's loop before (one row at a time). */
function forwardLoop(v: F, wv: F, n: number, eps: number, out: F): void {
  for (let r = 0; r < v.length; r += n) {
    let ss = 0;
    for (let j = 0; j < n; j++) ss += v[r + j]! * v[r + j]!;
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let j = 0; j < n; j++) out[r + j] = v[r + j]! * inv * wv[j]!;
  }
}

/** The backward kernel's loop before; dw summed in f64 over the rows in order. */
function backwardLoop(xv: F, wv: F, gv: F, eps: number, dx: F, dw: Float64Array): void {
  const n = wv.length;
  for (let r = 0; r < xv.length; r += n) {
    let ss = 0;
    let dot = 0;
    for (let j = 0; j < n; j++) {
      const xj = xv[r + j]!;
      ss += xj * xj;
      dot += gv[r + j]! * wv[j]! * xj;
    }
    const inv = 1 / Math.sqrt(ss / n + eps);
    const c = inv * inv * inv * (dot / n);
    for (let j = 0; j < n; j++) {
      const xj = xv[r + j]!;
      const gj = gv[r + j]!;
      dx[r + j] = inv * gj * wv[j]! - xj * c;
      dw[j]! += gj * xj * inv;
    }
  }
}

const kt = (dtype: 'f32' | 'f64', shape: number[], data: F): KernelTensor => ({
  storage: new CpuStorage(data),
  shape,
  dtype,
});
const data = (t: KernelTensor): F => (t.storage as CpuStorage).data as F;

describe('rmsnorm kernels, two rows at a time', () => {
  // [rows..., width]: even and odd row counts, one row, rows of 1, the step's widths, empty
  const SHAPES = [
    [8, 128, 128],
    [3, 7, 96],
    [1, 64],
    [5, 1],
    [2, 3, 33],
    [1024, 80],
    [9, 128],
    [0, 16],
    [301, 129], // f32: odd rows per trip through the SIMD kernel's memory (127), odd width
    [3, 16385], // wider than the SIMD kernel takes: the loop
  ];
  for (const dtype of ['f32', 'f64'] as const) {
    it(`forward, dx and dw equal the row-at-a-time loops bitwise (${dtype})`, () => {
      const rng = new Rng(dtype === 'f32' ? 1 : 2);
      const Arr = dtype === 'f32' ? Float32Array : Float64Array;
      const filled = (size: number, value: (i: number) => number): F => {
        const a = new Arr(size);
        for (let i = 0; i < size; i++) a[i] = value(i);
        return a;
      };
      for (const shape of SHAPES) {
        const n = shape[shape.length - 1]!;
        const size = shape.reduce((p, d) => p * d, 1);
        // rows of mixed scales (tiny ones make eps matter)
        const x = filled(size, (i) => rng.normal() * 10 ** ((Math.floor(i / n) % 5) - 3));
        const w = filled(n, () => 1 + rng.normal() * 0.1);
        const g = filled(size, () => rng.normal());
        for (const eps of [1e-6, 1e-2]) {
          const want = new Arr(size);
          forwardLoop(x, w, n, eps, want);
          const [y] = rmsnormKernel(cpu, [kt(dtype, shape, x), kt(dtype, [n], w)], { eps });
          expectSameBits(data(y!), want, `forward [${shape}] eps ${eps}`);
          const wantDx = new Arr(size);
          const wantDw = new Float64Array(n);
          backwardLoop(x, w, g, eps, wantDx, wantDw);
          const [dx, dw] = rmsnormBackwardKernel(cpu, [kt(dtype, shape, x), kt(dtype, [n], w), kt(dtype, shape, g)], {
            eps,
          });
          expectSameBits(data(dx!), wantDx, `dx [${shape}] eps ${eps}`);
          expectSameBits(data(dw!), Arr.from(wantDw), `dw [${shape}] eps ${eps}`);
        }
      }
    });
  }
});
