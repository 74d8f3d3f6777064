// firstMaxIndexF32 (the greedy sampler's row maximum in WebAssembly SIMD) against the scalar loop it
// replaces — `if (v > best)` from −∞ — on random rows of ragged lengths (under, across and past its
// 16-float vectors and 65,536-float chunks) and on rows built to break it: ties (the first wins, also
// across vectors, lanes and chunks), NaN (never wins), ±∞, −0 / +0, nothing above −∞ (−1), an offset start.
import { describe, expect, it } from 'vitest';
import { firstMaxIndexF32 } from '../src/cpu/argmax-simd.js';
import { Rng } from '../src/rng.js';

function scalar(values: Float32Array, start: number, n: number): number {
  let best = Number.NEGATIVE_INFINITY;
  let at = -1;
  for (let i = 0; i < n; i++) {
    const v = values[start + i]!;
    if (v > best) {
      best = v;
      at = i;
    }
  }
  return at;
}

const rng = new Rng(2026);
const row = (n: number) => rng.fillUniform(new Float32Array(n), -30, 30) as Float32Array;

describe('firstMaxIndexF32', () => {
  it('equals the scalar loop on random rows of ragged lengths', () => {
    for (const n of [0, 1, 3, 15, 16, 17, 63, 64, 65, 1000, 129_280, 65_536, 65_537, 131_072 + 5, 200_003]) {
      const v = row(n);
      expect(firstMaxIndexF32(v, 0, n), `n ${n}`).toBe(scalar(v, 0, n));
    }
  });

  it('ties: the first position wins, within a vector, across lanes, vectors and chunks', () => {
    const n = 140_000;
    for (const places of [
      [5, 6],
      [17, 3],
      [70_000, 1_000],
      [65_535, 65_536],
      [65_536, 130_000],
      [139_999, 139_990],
      [131_072, 64, 65_600],
    ]) {
      const v = row(n);
      for (const p of places) v[p] = 100;
      expect(firstMaxIndexF32(v, 0, n), `ties at ${places}`).toBe(Math.min(...places));
      expect(scalar(v, 0, n)).toBe(Math.min(...places));
    }
  });

  it('NaN never wins; +∞ does; −0 and +0 tie (the first); nothing above −∞ gives −1', () => {
    const n = 1_003;
    const v = row(n);
    v[10] = Number.NaN;
    v[500] = Number.NaN;
    expect(firstMaxIndexF32(v, 0, n)).toBe(scalar(v, 0, n));
    v[777] = Number.POSITIVE_INFINITY;
    expect(firstMaxIndexF32(v, 0, n)).toBe(777);
    const zeros = new Float32Array(40).fill(Number.NEGATIVE_INFINITY);
    zeros[20] = -0;
    zeros[3] = 0;
    zeros[33] = 0;
    expect(firstMaxIndexF32(zeros, 0, 40)).toBe(3);
    expect(firstMaxIndexF32(new Float32Array(100).fill(Number.NaN), 0, 100)).toBe(-1);
    expect(firstMaxIndexF32(new Float32Array(100).fill(Number.NEGATIVE_INFINITY), 0, 100)).toBe(-1);
    const mixed = new Float32Array(48).fill(Number.NaN);
    mixed[47] = Number.NEGATIVE_INFINITY;
    mixed[40] = -1e30;
    expect(firstMaxIndexF32(mixed, 0, 48)).toBe(40);
  });

  it('a row at an offset: positions count from its start', () => {
    const B = 3,
      V = 50_001;
    const all = row(B * V);
    for (let b = 0; b < B; b++) expect(firstMaxIndexF32(all, b * V, V)).toBe(scalar(all, b * V, V));
  });
});
