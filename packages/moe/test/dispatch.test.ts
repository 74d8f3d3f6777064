import { describe, expect, it } from 'vitest';
import { combineRows, dispatchPlan, permuteRows } from '../src/index';
import { rng } from './helpers';

function randomIndices(r: () => number, T: number, k: number, E: number, distinct: boolean): Int32Array {
  const idx = new Int32Array(T * k);
  for (let t = 0; t < T; t++) {
    const pool = Array.from({ length: E }, (_, e) => e);
    for (let j = 0; j < k; j++) {
      if (distinct) {
        const i = j + Math.floor(r() * (E - j));
        [pool[j], pool[i]] = [pool[i]!, pool[j]!];
        idx[t * k + j] = pool[j]!;
      } else {
        idx[t * k + j] = Math.floor(r() * r() * E); // skewed, repeats allowed
      }
    }
  }
  return idx;
}

describe('dispatch plan', () => {
  it('a small case by hand', () => {
    // T=3, k=2: t0 -> {2, 0}, t1 -> {0, 1}, t2 -> {2, 1}
    const plan = dispatchPlan(new Int32Array([2, 0, 0, 1, 2, 1]), 2, 4);
    expect(Array.from(plan.counts)).toEqual([2, 2, 2, 0]);
    expect(Array.from(plan.offsets)).toEqual([0, 2, 4, 6, 6]);
    // pairs p = t*k + j sorted by expert, then token
    expect(Array.from(plan.permutation)).toEqual([1, 2, 3, 5, 0, 4]);
    expect(Array.from(plan.sortedTokens)).toEqual([0, 1, 1, 2, 0, 2]);
    expect(Array.from(plan.sortedExperts)).toEqual([0, 0, 1, 1, 2, 2]);
    expect(Array.from(plan.inverse)).toEqual([4, 0, 1, 2, 5, 3]);
  });

  const cases = [
    { T: 1, k: 1, E: 1 },
    { T: 17, k: 2, E: 8 },
    { T: 100, k: 8, E: 64 },
    { T: 333, k: 6, E: 160 },
    { T: 64, k: 8, E: 256 },
  ];
  for (const c of cases) {
    for (const distinct of [true, false]) {
      it(`random T=${c.T} k=${c.k} E=${c.E} ${distinct ? 'distinct' : 'skewed'}`, () => {
        const r = rng(c.T * 31 + c.E + (distinct ? 1 : 0));
        const k = Math.min(c.k, c.E);
        const idx = randomIndices(r, c.T, k, c.E, distinct);
        const plan = dispatchPlan(idx, k, c.E);
        const n = c.T * k;
        // counts and offsets
        const counts = new Array<number>(c.E).fill(0);
        for (const e of idx) counts[e]!++;
        expect(Array.from(plan.counts)).toEqual(counts);
        expect(plan.offsets[0]).toBe(0);
        expect(plan.offsets[c.E]).toBe(n); // no token dropped
        for (let e = 0; e < c.E; e++) expect(plan.offsets[e + 1]! - plan.offsets[e]!).toBe(counts[e]);
        // permutation: a bijection, sorted by expert, stable (by pair index) within an expert
        const seen = new Uint8Array(n);
        for (let r2 = 0; r2 < n; r2++) {
          const p = plan.permutation[r2]!;
          expect(seen[p]).toBe(0);
          seen[p] = 1;
          expect(plan.sortedExperts[r2]).toBe(idx[p]);
          expect(plan.sortedTokens[r2]).toBe(Math.floor(p / k));
          if (r2 > 0) {
            const e0 = plan.sortedExperts[r2 - 1]!;
            const e1 = plan.sortedExperts[r2]!;
            expect(e0 <= e1).toBe(true);
            if (e0 === e1) expect(plan.permutation[r2 - 1]! < p).toBe(true);
          }
        }
        for (let e = 0; e < c.E; e++) {
          for (let r2 = plan.offsets[e]!; r2 < plan.offsets[e + 1]!; r2++) expect(plan.sortedExperts[r2]).toBe(e);
        }
        // inverse
        for (let p = 0; p < n; p++) expect(plan.permutation[plan.inverse[p]!]).toBe(p);
      });
    }
  }

  it('permute + per-expert transform + combine equals the direct per-token mixture', () => {
    const r = rng(3);
    const T = 40;
    const k = 4;
    const E = 16;
    const D = 5;
    const idx = randomIndices(r, T, k, E, true);
    const w = new Float32Array(T * k).map(() => r());
    const x = new Float32Array(T * D).map(() => r() - 0.5);
    const plan = dispatchPlan(idx, k, E);
    const xs = permuteRows(x, D, plan);
    // "expert" e scales its rows by (e + 1) and adds e
    const y = new Float32Array(xs.length);
    for (let row = 0; row < T * k; row++) {
      const e = plan.sortedExperts[row]!;
      for (let d = 0; d < D; d++) y[row * D + d] = xs[row * D + d]! * (e + 1) + e;
    }
    const out = combineRows(y, D, w, plan);
    for (let t = 0; t < T; t++) {
      for (let d = 0; d < D; d++) {
        let ref = 0;
        for (let j = 0; j < k; j++) {
          const e = idx[t * k + j]!;
          ref += w[t * k + j]! * (x[t * D + d]! * (e + 1) + e);
        }
        expect(out[t * D + d]).toBeCloseTo(ref, 5);
      }
    }
  });

  it('validation', () => {
    expect(() => dispatchPlan(new Int32Array([0, 1, 2]), 2, 4)).toThrow(/not a multiple of k=2/);
    expect(() => dispatchPlan(new Int32Array([0, 4]), 2, 4)).toThrow(/expert index 4 of token 0 \(slot 1\)/);
    expect(() => dispatchPlan(new Int32Array([0, -1]), 2, 4)).toThrow(/outside/);
    const plan = dispatchPlan(new Int32Array([0, 1]), 2, 4);
    expect(() => permuteRows(new Float32Array(3), 2, plan)).toThrow(/x length/);
    expect(() => combineRows(new Float32Array(4), 2, new Float32Array(3), plan)).toThrow(/weights length/);
  });
});
