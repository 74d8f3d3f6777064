// The training combine (weightedScatterAdd's CPU kernel) on f32 rows in the GEMM engine's memory runs
// core's SIMD combine over token ranges: bitwise the kernel's loop (out[rows[r]] += w[r]·y[r] in r
// order, each step f32(acc + w·y) from +0), ragged widths, tokens hit many times and never, 1 and 2
// threads; within f32 rounding of a float64 reference; host rows take the loop. Its backward (dy, dw)
// likewise on core's kernel: bitwise its loop.
import { afterAll, describe, expect, it } from 'vitest';
import { expectSameBits } from '@dsv3/core/testing';
import { CpuStorage, defaultBackend, exec, isResident, Rng, setGemmThreads, takeF32, Tensor, tensor } from '@dsv3/core';
import { COMBINE_BACKWARD_OP, COMBINE_OP } from '../src/fused-kernels';
import '../src/register';

afterAll(() => setGemmThreads(2));
const rng = new Rng(515);
const bits = (a: Float32Array) => Array.from(new Uint32Array(a.slice().buffer));

/** The kernel's loop, as it ran before the SIMD path. */
function loop(Y: Float32Array, W: Float32Array, R: Int32Array, T: number, H: number): Float32Array {
  const out = new Float32Array(T * H);
  for (let r = 0; r < R.length; r++) for (let h = 0; h < H; h++) out[R[r]! * H + h]! += W[r]! * Y[r * H + h]!;
  return out;
}

function f64Reference(Y: Float32Array, W: Float32Array, R: Int32Array, T: number, H: number): Float64Array {
  const out = new Float64Array(T * H);
  for (let r = 0; r < R.length; r++) for (let h = 0; h < H; h++) out[R[r]! * H + h]! += W[r]! * Y[r * H + h]!;
  return out;
}

function combine(Y: Float32Array, W: Float32Array, R: Int32Array, T: number, H: number): Tensor {
  // wrapped as it is (tensor() would copy it to host memory)
  const y = new Tensor(defaultBackend(), new CpuStorage(Y), [R.length, H], 'f32');
  return exec(COMBINE_OP, [y, tensor(W, { shape: [R.length] }), tensor(R, { dtype: 'i32' })], { T })[0]!;
}

/** The backward kernel's loop, as it ran before the SIMD path: dy[r] = w[r]·g[rows[r]], dw[r] = <g[rows[r]], y[r]>. */
function backwardLoop(G: Float32Array, Y: Float32Array, W: Float32Array, R: Int32Array, H: number) {
  const dy = new Float32Array(R.length * H);
  const dw = new Float32Array(R.length);
  for (let r = 0; r < R.length; r++) {
    let acc = 0;
    for (let h = 0; h < H; h++) {
      dy[r * H + h] = W[r]! * G[R[r]! * H + h]!;
      acc += G[R[r]! * H + h]! * Y[r * H + h]!;
    }
    dw[r] = acc;
  }
  return [dy, dw];
}

const wrapRows = (a: Float32Array, shape: number[]) => new Tensor(defaultBackend(), new CpuStorage(a), shape, 'f32');

describe('training combine on resident rows', () => {
  for (const threads of [1, 2])
    for (const [T, k, H] of [
      [300, 6, 64],
      [97, 3, 45],
      [512, 4, 130],
      [33, 8, 257],
    ] as const)
      it(`T ${T}, top-${k}, H ${H}, ${threads} thread(s): bitwise the loop, within f32 rounding of float64`, () => {
        setGemmThreads(threads);
        const N = T * k;
        // rows skewed so some tokens get many entries and the last token none
        const R = Int32Array.from({ length: N }, () => Math.floor(rng.uniform() ** 2 * (T - 1)));
        const Y = takeF32(N * H);
        rng.fillUniform(Y, -1, 1);
        const W = rng.fillUniform(new Float32Array(N), 0, 1) as Float32Array;
        if (N * H >= 4096) expect(isResident(Y)).toBe(true);
        const out = combine(Y, W, R, T, H).dataSync() as Float32Array;
        expectSameBits(out, loop(Y, W, R, T, H), 'out', { nan: 'bits' });
        const ref = f64Reference(Y, W, R, T, H);
        let worst = 0;
        for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(out[i]! - ref[i]!));
        expect(worst).toBeLessThan(k * 8 * 2 ** -23 * 4);
        expect(Array.from(out.subarray((T - 1) * H))).toEqual(new Array(H).fill(0));
        // the backward on the same rows, g resident: bitwise its loop; dw within f32 rounding of float64
        const G = takeF32(T * H);
        rng.fillUniform(G, -1, 1);
        const [dy, dw] = exec(
          COMBINE_BACKWARD_OP,
          [wrapRows(G, [T, H]), wrapRows(Y, [N, H]), tensor(W, { shape: [N] }), tensor(R, { dtype: 'i32' })],
          {},
        ).map((t) => t.dataSync() as Float32Array);
        const [wantY, wantW] = backwardLoop(G, Y, W, R, H);
        expectSameBits(dy!, wantY!, 'dy', { nan: 'bits' });
        expect(bits(dw!)).toEqual(bits(wantW!));
        for (let r = 0; r < N; r++) {
          let ref = 0;
          let mag = 0;
          for (let h = 0; h < H; h++) {
            ref += G[R[r]! * H + h]! * Y[r * H + h]!;
            mag += Math.abs(G[R[r]! * H + h]! * Y[r * H + h]!);
          }
          expect(Math.abs(dw![r]! - ref)).toBeLessThanOrEqual(Math.abs(ref) * 2 ** -24 + mag * H * 2 ** -53);
        }
      });

  it('host rows take the loop, with the same bits; a row outside [0, T) is a clear error', () => {
    const [T, N, H] = [50, 200, 24];
    const R = Int32Array.from({ length: N }, (_, r) => (r * 7) % T);
    const Y = rng.fillUniform(new Float32Array(N * H), -1, 1) as Float32Array;
    const W = rng.fillUniform(new Float32Array(N), 0, 1) as Float32Array;
    expect(bits(combine(Y, W, R, T, H).dataSync() as Float32Array)).toEqual(bits(loop(Y, W, R, T, H)));
    R[17] = T;
    expect(() => combine(Y, W, R, T, H)).toThrow(/row 17 targets token 50/);
  });
});
