// core's vectorized f32 exp (WebAssembly SIMD128) against float64 Math.exp: random arguments over
// f32's whole range, ragged lengths and offsets, scale and shift, the edges (±∞, NaN, the ends of
// the normal range), in place and into another array.
import { describe, expect, it } from 'vitest';
import { expF32, Rng, vectorExpAvailable } from '../src/index.js';

/** Error of `got` against exp(arg) in units of the f32 spacing at the true value. */
function ulps(got: number, arg: number): number {
  const want = Math.exp(arg);
  if (want < 1.1754943508222875e-38) return got === 0 || Math.abs(got - want) < 1.2e-38 ? 0 : Infinity;
  const spacing = 2 ** (Math.floor(Math.log2(want)) - 23);
  return Math.abs(got - want) / spacing;
}

describe('expF32', () => {
  it('runs the SIMD kernel here', () => {
    expect(vectorExpAvailable()).toBe(true);
  });

  it('is within 2 f32 ulps of float64 exp over the range, for ragged spans, scale and shift', () => {
    const rng = new Rng(5);
    for (const [n, at, scale, shift] of [
      [1, 0, 1, 0],
      [3, 5, 1, 0],
      [4, 1, -1, 0],
      [37, 2, 0.5, -3],
      [16384 + 7, 3, 1, 0], // more than one trip through the module's memory
      [70001, 0, -1, 0.25],
    ] as const) {
      const src = Float32Array.from({ length: n + at + 2 }, () => -100 + 190 * rng.uniform());
      const dst = new Float32Array(n + at + 2).fill(7);
      expF32(src, at, dst, at + 1, n, scale, shift);
      let worst = 0;
      for (let i = 0; i < n; i++) {
        const arg = Math.fround(Math.fround(scale * src[at + i]!) + shift);
        if (arg > 88.37626) expect(dst[at + 1 + i]).toBe(Infinity);
        else worst = Math.max(worst, ulps(dst[at + 1 + i]!, arg));
      }
      expect(worst, `n ${n}`).toBeLessThanOrEqual(2);
      // Nothing outside the span is touched.
      expect(dst[at]).toBe(7);
      expect(dst[at + n + 1]).toBe(7);
    }
  });

  it('gives 0 below the normal range, +Infinity past the top, and keeps NaN; in place', () => {
    const a = Float32Array.from([-Infinity, -1e30, -87.5, -87.3, 0, -0, 1e-30, 88.3, 88.5, Infinity, Number.NaN]);
    expF32(a, 0, a, 0, a.length);
    expect(Array.from(a.slice(0, 3))).toEqual([0, 0, 0]);
    expect(ulps(a[3]!, Math.fround(-87.3))).toBeLessThanOrEqual(2);
    expect(Array.from(a.slice(4, 7))).toEqual([1, 1, 1]);
    expect(ulps(a[7]!, Math.fround(88.3))).toBeLessThanOrEqual(2);
    expect(a[8]).toBe(Infinity);
    expect(a[9]).toBe(Infinity);
    expect(a[10]).toBeNaN();
  });
});
