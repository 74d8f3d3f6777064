// sgemm with leading dimensions (lda / ldb / ldc: row pitches of the stored A, B and C) against a
// float64 reference, on every path (wasm on one thread, on worker threads, pure JS): ragged shapes,
// odd pitches, every transpose combination, batches whose items interleave inside one row pitch (the
// heads of a [B, S, H, d] tensor), resident and host operands; elements between C's rows stay as they were.
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { normalizeGemm } from '../src/cpu/gemm/args.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { allocResident, freeResident, isResident, setGemmThreads, sgemm } from '../src/cpu/gemm/index.js';
import { Rng } from '../src/rng.js';
import { relativeError } from '../src/testing.js';

const saved = { ...gemmConfig };
const rng = new Rng(777);
const rand = (len: number): Float32Array => rng.fillUniform(new Float32Array(len), -1, 1) as Float32Array;

interface Stored {
  x: Float32Array;
  off: number;
  ld: number;
  trans: boolean;
}

/** float64 op(A) · op(B) for [m, k] · [k, n] read through offsets and pitches. */
function reference(m: number, n: number, k: number, A: Stored, B: Stored): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) {
        const a = A.x[A.off + (A.trans ? p * A.ld + i : i * A.ld + p)]!;
        const b = B.x[B.off + (B.trans ? j * B.ld + p : p * B.ld + j)]!;
        s += a * b;
      }
      out[i * n + j] = s;
    }
  return out;
}

/** C item's [m, n] rows (pitch ldc from `off`) as one dense array. */
function rowsOf(c: Float32Array, off: number, m: number, n: number, ldc: number): Float32Array {
  const out = new Float32Array(m * n);
  for (let i = 0; i < m; i++) out.set(c.subarray(off + i * ldc, off + i * ldc + n), i * n);
  return out;
}

const PATHS = {
  'wasm, 1 thread': () => setGemmThreads(1),
  'wasm, 2 threads': () => {
    setGemmThreads(2);
    gemmConfig.threadMinWork = 0;
  },
  'pure JS': () => {
    gemmConfig.forceJs = true;
  },
} as const;

afterAll(() => Object.assign(gemmConfig, saved));

const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [3, 5, 7],
  [17, 33, 65],
  [128, 32, 48],
  [21, 40, 9],
  [5, 9, 257],
];

/**
 * One pitched product per transpose combination: A, B and C each `pad` (odd) elements wider per row
 * than dense, at odd offsets; host or resident storage. Checks the values and that C's gaps are kept.
 */
function checkPitched(m: number, n: number, k: number, pad: number, resident: boolean): void {
  for (const [ta, tb] of [
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ] as const) {
    const [aRows, aCols] = ta ? [k, m] : [m, k];
    const [bRows, bCols] = tb ? [n, k] : [k, n];
    const [lda, ldb, ldc] = [aCols + pad, bCols + pad + 2, n + pad + 4];
    const store = (len: number, fill?: Float32Array): Float32Array => {
      const r = ((resident && allocResident('f32', len)) || new Float32Array(len)) as Float32Array; // host under pure JS
      if (fill) r.set(fill);
      return r;
    };
    const a = store(3 + aRows * lda, rand(3 + aRows * lda));
    const b = store(5 + bRows * ldb, rand(5 + bRows * ldb));
    const c = store(1 + m * ldc + 2);
    c.fill(7);
    sgemm({ m, n, k, a, aOffset: 3, lda, transA: ta, b, bOffset: 5, ldb, transB: tb, c, cOffset: 1, ldc });
    const ref = reference(m, n, k, { x: a, off: 3, ld: lda, trans: ta }, { x: b, off: 5, ld: ldb, trans: tb });
    expect(relativeError(rowsOf(c, 1, m, n, ldc), ref)).toBeLessThan(1e-6);
    for (let i = 0; i < c.length; i++) {
      const r = i - 1;
      const inside = r >= 0 && r < m * ldc && r % ldc < n;
      if (!inside) expect(c[i]).toBe(7);
    }
    for (const x of [a, b, c]) if (isResident(x)) freeResident(x);
  }
}

/**
 * The attention's form: q [B, S, H, d] and k [B, S, H, d] read per head in place (lda = ldb = H·d),
 * q·kᵀ per head into C [B, S, H, S'] heads side by side (ldc = H·n), batched over the heads of one
 * batch row (stride d) or over the batch rows of one head (stride S·H·d).
 */
function checkHeads(B: number, S: number, H: number, d: number, alongB: boolean, resident: boolean): void {
  const n = S;
  const store = (len: number, fill?: Float32Array): Float32Array => {
    const r = ((resident && allocResident('f32', len)) || new Float32Array(len)) as Float32Array; // host under pure JS
    if (fill) r.set(fill);
    return r;
  };
  const q = store(B * S * H * d, rand(B * S * H * d));
  const kk = store(B * S * H * d, rand(B * S * H * d));
  const c = store(B * S * H * n);
  c.fill(Number.NaN);
  const calls = alongB ? H : B;
  for (let x = 0; x < calls; x++) {
    const [inOff, outOff] = alongB ? [x * d, x * n] : [x * S * H * d, x * S * H * n];
    const [inStride, outStride] = alongB ? [S * H * d, S * H * n] : [d, n];
    sgemm({
      m: S,
      n,
      k: d,
      a: q,
      aOffset: inOff,
      lda: H * d,
      b: kk,
      bOffset: inOff,
      ldb: H * d,
      transB: true,
      c,
      cOffset: outOff,
      ldc: H * n,
      batch: alongB ? B : H,
      strideA: inStride,
      strideB: inStride,
      strideC: outStride,
    });
  }
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const at = (b * S * H + h) * d;
      const ref = reference(
        S,
        n,
        d,
        { x: q, off: at, ld: H * d, trans: false },
        { x: kk, off: at, ld: H * d, trans: true },
      );
      expect(relativeError(rowsOf(c, (b * S * H + h) * n, S, n, H * n), ref)).toBeLessThan(1e-6);
    }
  expect(c.every((v) => !Number.isNaN(v))).toBe(true); // every element written
  for (const x of [q, kk, c]) if (isResident(x)) freeResident(x);
}

describe.each(Object.entries(PATHS))('sgemm with row pitches (%s)', (_name, setup) => {
  beforeEach(() => {
    Object.assign(gemmConfig, saved);
    setup();
  });

  it.each(SHAPES)('%i x %i x %i, every transpose, odd pitches and offsets, host operands', (m, n, k) => {
    checkPitched(m, n, k, 3, false);
  });

  it.each(SHAPES)('%i x %i x %i, every transpose, odd pitches and offsets, resident operands', (m, n, k) => {
    checkPitched(m, n, k, 1, true);
  });

  it.each([
    [2, 16, 3, 8],
    [3, 9, 2, 5], // ragged: C tiles are partial
    [2, 128, 4, 48], // the tiny preset's layer
  ])('heads of [%i, %i, %i, %i] read and written in place', (B, S, H, d) => {
    for (const alongB of [false, true]) for (const resident of [false, true]) checkHeads(B, S, H, d, alongB, resident);
  });

  it('k = 0 zeroes only the rows of C', () => {
    const c = new Float32Array(3 * 7).fill(7);
    sgemm({ m: 3, n: 4, k: 0, a: new Float32Array(0), b: new Float32Array(0), c, ldc: 7 });
    for (let i = 0; i < c.length; i++) expect(c[i]).toBe(i % 7 < 4 ? 0 : 7);
  });
});

describe('sgemm row pitch errors', () => {
  const ok = { m: 2, n: 3, k: 4, a: rand(8), b: rand(12), c: new Float32Array(6) };

  it('rejects a pitch narrower than the stored row', () => {
    expect(() => sgemm({ ...ok, lda: 3 })).toThrow(/lda \(3\) must be >= the stored row width \(4\)/);
    expect(() => sgemm({ ...ok, ldb: 2, transB: true, b: rand(12) })).toThrow(/ldb \(2\) must be >= .*\(4\)/);
    expect(() => sgemm({ ...ok, ldc: 2 })).toThrow(/ldc \(2\) must be >= .*\(3\)/);
    expect(() => sgemm({ ...ok, lda: -1 })).toThrow(/lda must be a non-negative integer/);
  });

  it('measures spans with the pitch', () => {
    expect(() => sgemm({ ...ok, lda: 5 })).toThrow(/a is too short: needs 9/);
    expect(() => sgemm({ ...ok, ldc: 4 })).toThrow(/c is too short: needs 7/);
    expect(normalizeGemm({ ...ok, a: rand(9), lda: 5, batch: 1 }).strideA).toBe(9);
  });

  it('rejects batched outputs that would overlap', () => {
    const c = new Float32Array(64);
    // side by side inside one pitch: fine; one element too close, or past the pitch: overlap
    expect(() =>
      normalizeGemm({ ...ok, a: rand(8), b: rand(12), c, ldc: 9, batch: 3, strideA: 0, strideB: 0, strideC: 3 }),
    ).not.toThrow();
    expect(() => normalizeGemm({ ...ok, c, ldc: 9, batch: 3, strideA: 0, strideB: 0, strideC: 2 })).toThrow(/overlap/);
    expect(() => normalizeGemm({ ...ok, c, ldc: 8, batch: 3, strideA: 0, strideB: 0, strideC: 3 })).toThrow(/overlap/);
  });
});
