import { randomUniform, relativeError } from '@dsv3/core/testing';
import { describe, expect, it } from 'vitest';
import {
  decodeE5M2Array,
  dequantizeActivation,
  encodeE5M2Array,
  dequantizeWeight,
  exactBlockScaledProduct,
  fp8GemmBlockScaled,
  gemmF32NT,
  quantizeActivation,
  quantizeWeight,
} from '../src/index';
import type { SlabGemm } from '../src/index';
import { f32, u8 } from './goldens';

const CASES = [
  [64, 384, 512],
  [32, 256, 4096],
] as const;

function randu(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  return Float32Array.from(randomUniform(n, seed, lo, hi));
}

describe.each(CASES)('fp8GemmBlockScaled on k.gemm.%ix%ix%i', (m, n, k) => {
  const key = `k.gemm.${m}x${n}x${k}`;
  const args = () => [u8(`${key}.a`), f32(`${key}.as`), u8(`${key}.b`), f32(`${key}.bs`), m, n, k] as const;

  it('matches the exact product of the dequantized operands to <= 1e-6 (relative L2)', () => {
    const c = fp8GemmBlockScaled(...args());
    const err = relativeError(c, f32(`${key}.exact`));
    expect(err).toBeLessThanOrEqual(1e-6);
    // and DeepSeek's Triton fp8_gemm (itself 6e-8 / 1.1e-7 from exact)
    expect(relativeError(c, f32(`${key}.official`))).toBeLessThanOrEqual(1e-6);
  });

  it('is within ~5% of the unquantized f32 product (quantization costs ~3.7%)', () => {
    const c = fp8GemmBlockScaled(...args());
    const ref = new Float32Array(m * n);
    gemmF32NT(m, n, k, f32(`${key}.x_f32`), f32(`${key}.w_f32`), ref);
    const err = relativeError(c, ref);
    expect(err).toBeGreaterThan(0.02);
    expect(err).toBeLessThan(0.05);
  });

  it('gives the same result through the slabGemm seam (f32 slab products)', () => {
    let calls = 0;
    const slab: SlabGemm = (mm, nn, kk, a, b, c) => {
      calls++;
      gemmF32NT(mm, nn, kk, a, b, c);
    };
    const c = fp8GemmBlockScaled(...args(), { slabGemm: slab });
    expect(calls).toBe(k / 128);
    expect(relativeError(c, f32(`${key}.exact`))).toBeLessThanOrEqual(1e-6);
  });

  it('dequantizeFirst (scaled operands, one full-K GEMM) agrees to f32 rounding', () => {
    let calls = 0;
    const slab: SlabGemm = (mm, nn, kk, a, b, c) => {
      calls++;
      expect(kk).toBe(k);
      gemmF32NT(mm, nn, kk, a, b, c);
    };
    const c = fp8GemmBlockScaled(...args(), { dequantizeFirst: true, slabGemm: slab });
    expect(calls).toBe(1);
    expect(relativeError(c, f32(`${key}.exact`))).toBeLessThanOrEqual(1e-6);
    const c2 = fp8GemmBlockScaled(...args(), { dequantizeFirst: true });
    expect(relativeError(c2, f32(`${key}.exact`))).toBeLessThanOrEqual(1e-6);
  });

  it('writes into a supplied out buffer', () => {
    const out = new Float32Array(m * n).fill(123);
    const c = fp8GemmBlockScaled(...args(), { out });
    expect(c).toBe(out);
    expect(relativeError(out, f32(`${key}.exact`))).toBeLessThanOrEqual(1e-6);
  });
});

describe('fp8GemmBlockScaled on ragged shapes', () => {
  it.each([
    [5, 7, 200],
    [13, 130, 129],
    [1, 1, 1],
    [33, 257, 300],
    [4, 2, 128],
  ])('M=%i N=%i K=%i (K, N not multiples of 128) equals the exact block-scaled product', (m, n, k) => {
    const x = randu(m * k, m * 7 + k);
    const w = randu(n * k, n * 13 + k, -0.1, 0.1);
    const qa = quantizeActivation(x, [m, k]);
    const qb = quantizeWeight(w, [n, k]);
    const c = fp8GemmBlockScaled(qa.q, qa.scales, qb.q, qb.scales, m, n, k);
    const exact = exactBlockScaledProduct(qa.q, qa.scales, qb.q, qb.scales, m, n, k);
    expect(relativeError(c, exact)).toBeLessThanOrEqual(1e-6);
    const cd = fp8GemmBlockScaled(qa.q, qa.scales, qb.q, qb.scales, m, n, k, { dequantizeFirst: true });
    expect(relativeError(cd, exact)).toBeLessThanOrEqual(1e-6);
    const cs = fp8GemmBlockScaled(qa.q, qa.scales, qb.q, qb.scales, m, n, k, { slabGemm: gemmF32NT });
    expect(relativeError(cs, exact)).toBeLessThanOrEqual(1e-6);
    // the same as an f32 GEMM of the dequantized operands
    const da = dequantizeActivation(qa.q, qa.scales, [m, k]);
    const db = dequantizeWeight(qb.q, qb.scales, [n, k]);
    const ref = new Float32Array(m * n);
    gemmF32NT(m, n, k, da, db, ref);
    expect(relativeError(c, ref)).toBeLessThanOrEqual(1e-6);
  });

  it('handles empty dimensions', () => {
    expect(
      fp8GemmBlockScaled(new Uint8Array(0), new Float32Array(0), new Uint8Array(0), new Float32Array(0), 0, 0, 0)
        .length,
    ).toBe(0);
    const c = fp8GemmBlockScaled(
      new Uint8Array(0),
      new Float32Array(0),
      new Uint8Array(0),
      new Float32Array(0),
      2,
      3,
      0,
    );
    expect(Array.from(c)).toEqual([0, 0, 0, 0, 0, 0]);
  });
});

describe('fp8GemmBlockScaled special values and bad input', () => {
  const m = 4;
  const n = 3;
  const k = 256;
  const mk = () => {
    const qa = quantizeActivation(randu(m * k, 1), [m, k]);
    const qb = quantizeWeight(randu(n * k, 2), [n, k]);
    return { a: qa.q, as: qa.scales, b: qb.q, bs: qb.scales };
  };

  it('propagates NaN bytes to the rows/columns they touch', () => {
    const { a, as, b, bs } = mk();
    a[1 * k + 200] = 0x7f; // NaN in row 1 of a
    b[2 * k + 3] = 0xff; // NaN in row 2 of b (column 2 of C)
    const c = fp8GemmBlockScaled(a, as, b, bs, m, n, k);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) expect(Number.isNaN(c[i * n + j]!)).toBe(i === 1 || j === 2);
    }
  });

  it('throws on sizes, scales and options that do not fit', () => {
    const { a, as, b, bs } = mk();
    expect(() => fp8GemmBlockScaled(a.subarray(1), as, b, bs, m, n, k)).toThrow(/a has 1023 bytes, expected M\*K/);
    expect(() => fp8GemmBlockScaled(a, as, b.subarray(1), bs, m, n, k)).toThrow(/b has 767 bytes, expected N\*K/);
    expect(() => fp8GemmBlockScaled(a, as.subarray(1), b, bs, m, n, k)).toThrow(
      /aScale has 7 scales, expected \[M, ceil\(K\/128\)\] = \[4, 2\]/,
    );
    expect(() => fp8GemmBlockScaled(a, as, b, new Float32Array(4), m, n, k)).toThrow(
      /bScale has 4 scales, expected .* = \[1, 2\]/,
    );
    expect(() => fp8GemmBlockScaled(a, as, b, bs, m, n, 2.5)).toThrow(/k must be a non-negative integer/);
    expect(() => fp8GemmBlockScaled(a, as, b, bs, m, n, k, { block: 0 })).toThrow(/block/);
    expect(() => fp8GemmBlockScaled(a, as, b, bs, m, n, k, { out: new Float32Array(5) })).toThrow(/out must be/);
    expect(() => fp8GemmBlockScaled(new Int8Array(m * k) as unknown as Uint8Array, as, b, bs, m, n, k)).toThrow(
      /Uint8Array/,
    );
    for (const bad of [NaN, Infinity]) {
      const as2 = as.slice();
      as2[5] = bad;
      expect(() => fp8GemmBlockScaled(a, as2, b, bs, m, n, k)).toThrow(/aScale\[5\] = .* is not finite/);
      const bs2 = bs.slice();
      bs2[1] = bad;
      expect(() => fp8GemmBlockScaled(a, as, b, bs2, m, n, k)).toThrow(/bScale\[1\] = .* is not finite/);
    }
  });

  it('accepts E5M2 operands', () => {
    const x = randu(m * k, 3);
    const w = randu(n * k, 4);
    const a = encodeE5M2Array(x);
    const b = encodeE5M2Array(w);
    const as = new Float32Array(m * 2).fill(0.5);
    const bs = new Float32Array(2).fill(0.25);
    const c = fp8GemmBlockScaled(a, as, b, bs, m, n, k, { aFormat: 'e5m2', bFormat: 'e5m2' });
    const da = decodeE5M2Array(a);
    const db = decodeE5M2Array(b);
    const ref = new Float32Array(m * n);
    gemmF32NT(m, n, k, da, db, ref);
    expect(
      relativeError(
        c,
        ref.map((v) => v * 0.125),
      ),
    ).toBeLessThan(1e-6);
  });
});
