// The sampler's distributions (temperature, top-k, top-p), seeded draws, and the chi-square helper.
import { describe, expect, it } from 'vitest';
import { Rng } from '@dsv3/core';
import { argmax, probabilities, sampleFrom, Sampler } from '../src/index.js';
import { chiSquareSf, chiSquareTest, gammaQ } from './helpers.js';

const softmax = (x: number[], t = 1): number[] => {
  const m = Math.max(...x);
  const e = x.map((v) => Math.exp((v - m) / t));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
};

describe('chi-square p-values', () => {
  it('match known quantiles', () => {
    expect(chiSquareSf(3.841458820694124, 1)).toBeCloseTo(0.05, 10);
    expect(chiSquareSf(18.307038053275146, 10)).toBeCloseTo(0.05, 10);
    expect(chiSquareSf(6.634896601021214, 1)).toBeCloseTo(0.01, 10);
    expect(chiSquareSf(124.34211340400407, 100)).toBeCloseTo(0.05, 9);
    for (const x of [0.1, 1, 5, 20]) expect(chiSquareSf(x, 2)).toBeCloseTo(Math.exp(-x / 2), 12);
    expect(gammaQ(1, 3)).toBeCloseTo(Math.exp(-3), 12);
  });
  it('pools sparse cells and flags impossible outcomes', () => {
    expect(chiSquareTest([50, 50], [0.5, 0.5]).p).toBeCloseTo(1, 12);
    expect(chiSquareTest([10, 0, 1], [0.9, 0.1, 0]).p).toBe(0);
  });
});

describe('sampler', () => {
  const logits = [1.0, 3.0, -0.5, 2.0, 2.5, 0.0];

  it('temperature, top-k and top-p', () => {
    expect(Array.from(probabilities(logits, { temperature: 0 }))).toEqual([0, 1, 0, 0, 0, 0]);
    const p1 = probabilities(logits);
    softmax(logits).forEach((v, i) => expect(p1[i]).toBeCloseTo(v, 14));
    const pt = probabilities(logits, { temperature: 0.5 });
    softmax(logits, 0.5).forEach((v, i) => expect(pt[i]).toBeCloseTo(v, 14));
    // top-3: tokens 1, 4, 3
    const pk = probabilities(logits, { topK: 3 });
    const sk = softmax([3.0, 2.5, 2.0]);
    expect([pk[1], pk[4], pk[3]].map((v) => +v!.toFixed(14))).toEqual(sk.map((v) => +v.toFixed(14)));
    expect(pk[0]! + pk[2]! + pk[5]!).toBe(0);
    // top-p: the smallest most-likely set reaching p
    const sorted = [...p1].sort((a, b) => b - a);
    const pp = probabilities(logits, { topP: sorted[0]! + 0.5 * sorted[1]! });
    expect(Array.from(pp).filter((v) => v > 0).length).toBe(2);
    expect(pp[1]! / pp[4]!).toBeCloseTo(p1[1]! / p1[4]!, 12);
    expect(Array.from(probabilities(logits, { topP: 1e-9 }))).toEqual([0, 1, 0, 0, 0, 0]);
    // top-k then top-p compose, and the result sums to 1
    const both = probabilities(logits, { temperature: 0.8, topK: 4, topP: 0.9 });
    expect(both.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 14);
    expect(() => probabilities(logits, { temperature: -1 })).toThrow(/temperature/);
    expect(() => probabilities(logits, { topP: 0 })).toThrow(/topP/);
  });

  it('argmax takes the first maximum; greedy sampling uses no randomness', () => {
    expect(argmax([1, 3, 3, 2])).toBe(1);
    const s = new Sampler({ temperature: 0 });
    expect(s.sample(logits)).toBe(1);
  });

  it('draws follow the distribution (chi-square) and repeat for a seed', () => {
    const p = probabilities(logits, { temperature: 0.9, topK: 5 });
    const rng = new Rng(123);
    const counts = new Array(6).fill(0);
    for (let i = 0; i < 20000; i++) counts[sampleFrom(p, rng)]++;
    expect(counts[2]).toBe(0); // cut by top-k
    expect(chiSquareTest(counts, p).p).toBeGreaterThan(0.001);
    const a = new Sampler({ temperature: 1, seed: 5 });
    const b = new Sampler({ temperature: 1, seed: 5 });
    expect(Array.from({ length: 50 }, () => a.sample(logits))).toEqual(
      Array.from({ length: 50 }, () => b.sample(logits)),
    );
  });
});
