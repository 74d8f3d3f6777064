// core's vectorized f32 exp (WebAssembly SIMD128) against float64 Math.exp: random arguments over
// f32's whole range, ragged lengths and offsets, scale and shift, the edges (±∞, NaN, the ends of
// the normal range), in place and into another array.
import { describe, expect, it } from 'vitest';
import { expF32, Rng, vectorExpAvailable } from '../src/index.js';

/**
 * The kernel's arithmetic spelled out in f32 (every operation one rounding, Math.fround of the f64 result):
 * clamp with NaN-propagating max / min, n = nearest (ties to even), r = x − n·ln2 in two parts, Cephes'
 * polynomial, · 2^n; 0 below the range, +∞ above it. Whatever instructions the kernel uses, its results
 * must be these bits.
 */
function expSpelledOut(x: number): number {
  const F = Math.fround;
  const [LO, HI] = [F(-87.33654), F(88.37626)];
  const c = Math.min(Math.max(x, LO), HI);
  const v = F(c * F(Math.LOG2E));
  const n = Math.abs(v - Math.trunc(v)) === 0.5 ? 2 * Math.round(v / 2) : Math.round(v);
  let r = F(c - F(n * F(0.693359375)));
  r = F(r - F(n * F(-2.1219444e-4)));
  const coeffs = [1.98756915e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
  let p = F(coeffs[0]!);
  for (const k of coeffs.slice(1)) p = F(F(p * r) + F(k));
  p = F(F(F(p * F(r * r)) + r) + 1);
  p = F(p * F(2 ** n));
  if (x < LO) return 0;
  if (x > HI) return Infinity;
  return p;
}

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

  it('gives the bits of its arithmetic spelled out in f32, over a stride of every f32 bit pattern and the edges', () => {
    const n = 1 << 22;
    const bits = new Uint32Array(n);
    for (let i = 0; i < n; i++) bits[i] = i * 1023 + (i & 1023); // every ~1024th pattern, all low bits visited
    const edges = [0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 1, 0x807fffff, 0x00800000];
    for (const x of [-87.33654, 88.37626, -87.3365, 88.3762, 0.5 * Math.LN2, -0.5 * Math.LN2, 1e-30, -1e-30])
      edges.push(new Uint32Array(Float32Array.of(x).buffer)[0]!);
    bits.set(edges);
    const src = new Float32Array(bits.buffer);
    const dst = new Float32Array(n);
    expF32(src, 0, dst, 0, n);
    let differ = 0;
    for (let i = 0; i < n; i++) {
      const want = expSpelledOut(src[i]!);
      if (!(Object.is(dst[i], want) || (Number.isNaN(want) && Number.isNaN(dst[i]!)))) {
        if (differ++ < 5) expect.soft(dst[i], `exp(${src[i]}) bits ${bits[i]!.toString(16)}`).toBe(want);
      }
    }
    expect(differ).toBe(0);
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
