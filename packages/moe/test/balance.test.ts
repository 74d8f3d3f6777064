import { describe, expect, it } from 'vitest';
import { expertLoad, gateRoute, maxVio, MaxVioTracker, sequenceBalanceLoss, updateBias } from '../src/index';
import { normal, rng } from './helpers';

describe('expert load and MaxVio', () => {
  it('counts tokens per expert', () => {
    const load = expertLoad(new Int32Array([0, 3, 3, 1, 3, 0]), 5);
    expect(Array.from(load)).toEqual([2, 1, 0, 3, 0]);
    expect(() => expertLoad(new Int32Array([0, 5]), 5)).toThrow(/expert index 5/);
  });

  it('MaxVio = (max - mean) / mean', () => {
    expect(maxVio([1, 1, 1, 5])).toBeCloseTo(1.5, 12);
    expect(maxVio([4, 4, 4, 4])).toBe(0);
    expect(maxVio([0, 0, 0])).toBe(0);
    expect(() => maxVio([])).toThrow(/empty/);
    expect(() => maxVio([1, NaN])).toThrow(/expert 1/);
  });

  it('tracker: batch and accumulated MaxVio', () => {
    const tr = new MaxVioTracker(2);
    expect(tr.batch).toBeNaN();
    expect(tr.update([3, 1])).toBeCloseTo(0.5, 12);
    expect(tr.updateFromIndices(new Int32Array([1, 1, 1, 0]))).toBeCloseTo(0.5, 12);
    expect(tr.batch).toBeCloseTo(0.5, 12);
    expect(tr.global).toBe(0); // 4 + 4
    expect(tr.meanBatch).toBeCloseTo(0.5, 12);
    expect(tr.history).toEqual([0.5, 0.5]);
    expect(tr.numSteps).toBe(2);
    tr.reset();
    expect(tr.history).toEqual([]);
    expect(() => tr.update([1])).toThrow(/numExperts=2/);
  });
});

describe('aux-loss-free bias update', () => {
  it('b_i += gamma * sign(mean - load_i), new array by default', () => {
    const bias = new Float32Array([0, 0.5, -0.25, 1]);
    const out = updateBias(bias, [10, 2, 4, 4], 0.125); // mean 5
    expect(Array.from(out)).toEqual([-0.125, 0.625, -0.125, 1.125]);
    expect(Array.from(bias)).toEqual([0, 0.5, -0.25, 1]);
    const same = updateBias(bias, [5, 5, 6, 4], 0.125, { inPlace: true });
    expect(same).toBe(bias);
    expect(Array.from(bias)).toEqual([0, 0.5, -0.375, 1.125]);
    expect(() => updateBias(bias, [1, 2], 0.1)).toThrow(/load length/);
    expect(() => updateBias(bias, [1, 2, 3, 4], -1)).toThrow(/gamma/);
  });

  it('drives a skewed router toward balance (V3 gate, gamma = 0.001, 200 steps)', () => {
    // 64 experts in 8 groups, keep 4, top-8, sigmoid; 1024 random tokens per step.
    // gate logits = x·W + skew with 6 experts pushed up by +1.5 and every 7th by +0.7.
    const E = 64;
    const D = 32;
    const T = 1024;
    const r = rng(1);
    const W = new Float32Array(D * E).map(() => normal(r) / Math.sqrt(D));
    const skew = new Float32Array(E).map((_, e) => (e < 6 ? 1.5 : e % 7 === 0 ? 0.7 : 0));
    let bias: Float32Array = new Float32Array(E);
    const tracker = new MaxVioTracker(E);
    const logits = new Float32Array(T * E);
    for (let step = 0; step < 200; step++) {
      const x = new Float32Array(T * D).map(() => normal(r));
      for (let t = 0; t < T; t++) {
        for (let e = 0; e < E; e++) {
          let s = skew[e] as number;
          for (let d = 0; d < D; d++) s += (x[t * D + d] as number) * (W[d * E + e] as number);
          logits[t * E + e] = s;
        }
      }
      const res = gateRoute(logits, {
        nRoutedExperts: E,
        numExpertsPerTok: 8,
        nGroup: 8,
        topkGroup: 4,
        normTopkProb: true,
        routedScalingFactor: 2.5,
        scoringFunc: 'sigmoid',
        bias,
      });
      const load = expertLoad(res.indices, E);
      tracker.update(load);
      bias = updateBias(bias, load, 0.001);
    }
    const h = tracker.history;
    const curve = [0, 10, 25, 50, 75, 100, 150, 199].map((s) => `${s}: ${h[s]!.toFixed(3)}`);
    console.log(`MaxVio_batch curve: ${curve.join(' | ')}; MaxVio_global ${tracker.global.toFixed(3)}`);
    const last20 = h.slice(-20).reduce((a, b) => a + b, 0) / 20;
    expect(h[0]).toBeGreaterThan(3);
    expect(last20).toBeLessThan(0.3);
    expect(last20).toBeLessThan(h[0]! / 10);
  });
});

describe('sequence-wise balance loss', () => {
  it('matches the formula on a tiny example by hand', () => {
    // T=2, E=4, K=2; token 0 picks {3, 2}, token 1 picks {3, 0}
    // f = 4/(2*2) * counts = [1, 0, 1, 2]; P = mean of normalized rows = [.175, .225, .275, .325]
    // L = 0.1 * (.175 + 0 + .275 + .65) = 0.11
    const s = new Float64Array([0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5]);
    const out = sequenceBalanceLoss(s, new Int32Array([3, 2, 3, 0]), { numExperts: 4, k: 2, alpha: 0.1 });
    expect(Array.from(out.f)).toEqual([1, 0, 1, 2]);
    Array.from(out.P).forEach((v, i) => expect(v).toBeCloseTo([0.175, 0.225, 0.275, 0.325][i]!, 14));
    expect(out.loss).toBeCloseTo(0.11, 14);
  });

  it('several sequences: mean of the per-sequence losses', () => {
    const r = rng(5);
    const E = 6;
    const k = 2;
    const L = 5;
    const scores = new Float32Array(3 * L * E).map(() => r());
    const idx = new Int32Array(3 * L * k).map((_, i) => (i % k === 0 ? Math.floor(r() * 3) : 3 + Math.floor(r() * 3)));
    const all = sequenceBalanceLoss(scores, idx, { numExperts: E, k, alpha: 0.01, seqLen: L });
    let sum = 0;
    for (let b = 0; b < 3; b++) {
      sum += sequenceBalanceLoss(
        scores.subarray(b * L * E, (b + 1) * L * E),
        idx.subarray(b * L * k, (b + 1) * L * k),
        {
          numExperts: E,
          k,
          alpha: 0.01,
        },
      ).loss;
    }
    expect(all.loss).toBeCloseTo(sum / 3, 14);
    expect(all.f.length).toBe(3 * E);
  });

  it('a perfectly uniform router gives L = alpha', () => {
    // every expert picked equally (f_i = 1) and uniform scores (P_i = 1/E): L = alpha * E * 1/E
    const E = 4;
    const s = new Float64Array(2 * E).fill(0.3);
    const out = sequenceBalanceLoss(s, new Int32Array([0, 1, 2, 3]), { numExperts: E, k: 2, alpha: 0.5 });
    expect(out.loss).toBeCloseTo(0.5, 14);
  });

  it('gradient w.r.t. the scores matches central finite differences', () => {
    const r = rng(11);
    const E = 8;
    const k = 3;
    const T = 12;
    const seqLen = 4;
    const scores = new Float64Array(T * E).map(() => 1 / (1 + Math.exp(-2 * normal(r))));
    const idx = new Int32Array(T * k);
    for (let t = 0; t < T; t++) {
      const perm = Array.from({ length: E }, (_, e) => e).sort(() => r() - 0.5);
      for (let j = 0; j < k; j++) idx[t * k + j] = perm[j]!;
    }
    const opts = { numExperts: E, k, alpha: 0.3, seqLen };
    const { grad } = sequenceBalanceLoss(scores, idx, opts);
    const h = 1e-6;
    let maxErr = 0;
    let maxG = 0;
    for (let i = 0; i < T * E; i++) {
      const p = scores.slice();
      p[i]! += h;
      const m = scores.slice();
      m[i]! -= h;
      const fd = (sequenceBalanceLoss(p, idx, opts).loss - sequenceBalanceLoss(m, idx, opts).loss) / (2 * h);
      maxErr = Math.max(maxErr, Math.abs(fd - grad[i]!));
      maxG = Math.max(maxG, Math.abs(grad[i]!));
    }
    expect(maxG).toBeGreaterThan(1e-3);
    expect(maxErr).toBeLessThan(1e-8);
  });

  it('validation', () => {
    const s = new Float64Array(8).fill(0.5);
    expect(() => sequenceBalanceLoss(s, new Int32Array(3), { numExperts: 4, k: 2, alpha: 1 })).toThrow(
      /indices length/,
    );
    expect(() => sequenceBalanceLoss(s, new Int32Array(4), { numExperts: 4, k: 2, alpha: 1, seqLen: 3 })).toThrow(
      /seqLen=3/,
    );
    expect(() =>
      sequenceBalanceLoss(new Float64Array(8), new Int32Array(4), { numExperts: 4, k: 2, alpha: 1 }),
    ).toThrow(/positive sum/);
  });
});
