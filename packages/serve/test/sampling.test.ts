// Per-request sampling: greedy, penalties, bias, top-k/top-p/min-p, seeds, logprobs, and speculative
// verification of a one-hot draft that leaves the distribution exactly p.
import { describe, expect, it } from 'vitest';
import {
  defaultSamplingParams,
  logSoftmax,
  RequestSampler,
  validateSamplingParams,
  type SamplingParams,
} from '../src/index.js';

const params = (o: Partial<SamplingParams>): SamplingParams => ({ ...defaultSamplingParams, ...o });
const row = Float32Array.from([1.0, 2.0, 0.5, 1.5, -1.0]);
const softmax = (x: ArrayLike<number>, t = 1): number[] => {
  const m = Math.max(...Array.from(x));
  const e = Array.from(x, (v) => Math.exp((v - m) / t));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
};
function frequencies(n: number, draw: () => number, V = 5): number[] {
  const c = new Array<number>(V).fill(0);
  for (let i = 0; i < n; i++) c[draw()]!++;
  return c.map((v) => v / n);
}

describe('RequestSampler', () => {
  it('greedy picks the argmax; logit_bias and penalties move it', () => {
    expect(new RequestSampler(params({ temperature: 0 }), []).sample(row).token).toBe(1);
    expect(new RequestSampler(params({ temperature: 0, logitBias: new Map([[4, 10]]) }), []).sample(row).token).toBe(4);
    const s = new RequestSampler(params({ temperature: 0, presencePenalty: 1 }), []);
    expect(s.sample(row).token).toBe(1);
    expect(s.sample(row).token).toBe(3); // 2 - 1 < 1.5
    const r = new RequestSampler(params({ temperature: 0, repetitionPenalty: 4 }), [1]);
    expect(r.sample(row).token).toBe(3); // 2 / 4 < 1.5
    const f = new RequestSampler(params({ temperature: 0, frequencyPenalty: 0.3 }), []);
    expect([f.sample(row).token, f.sample(row).token, f.sample(row).token]).toEqual([1, 1, 3]);
  });

  it('sampling follows softmax(x / T); top-k, top-p and min-p cut the tail; seeds reproduce', () => {
    const N = 40_000;
    const s = new RequestSampler(params({ temperature: 0.7, seed: 1 }), []);
    frequencies(N, () => s.sample(row).token).forEach((f, i) => expect(f).toBeCloseTo(softmax(row, 0.7)[i]!, 1));
    const k = new RequestSampler(params({ topK: 2, seed: 2 }), []);
    const fk = frequencies(4000, () => k.sample(row).token);
    expect(fk[0]! + fk[2]! + fk[4]!).toBe(0);
    const p = new RequestSampler(params({ topP: 0.5, seed: 3 }), []);
    expect(new Set(Array.from({ length: 2000 }, () => p.sample(row).token))).toEqual(new Set([1, 3]));
    const m = new RequestSampler(params({ minP: 0.5, seed: 4 }), []);
    expect(new Set(Array.from({ length: 2000 }, () => m.sample(row).token))).toEqual(new Set([1, 3]));
    const a = new RequestSampler(params({ seed: 9 }), []);
    const b = new RequestSampler(params({ seed: 9 }), []);
    expect(Array.from({ length: 50 }, () => a.sample(row).token)).toEqual(
      Array.from({ length: 50 }, () => b.sample(row).token),
    );
  });

  it('verification of a one-hot draft keeps the distribution p', () => {
    const N = 40_000;
    const p = softmax(row);
    for (const draft of [0, 1, 4]) {
      const s = new RequestSampler(params({ seed: 10 + draft }), []);
      let accepted = 0;
      const f = frequencies(N, () => {
        const v = s.verify(row, draft);
        if (v.accepted) accepted++;
        return v.token;
      });
      f.forEach((x, i) => expect(x).toBeCloseTo(p[i]!, 1));
      expect(accepted / N).toBeCloseTo(p[draft]!, 1);
    }
    const g = new RequestSampler(params({ temperature: 0 }), []);
    expect(g.verify(row, 1)).toMatchObject({ token: 1, accepted: true });
    expect(g.verify(row, 3)).toMatchObject({ token: 1, accepted: false });
  });

  it('logprobs are the raw distribution, with the top alternatives', () => {
    const s = new RequestSampler(params({ temperature: 0, logprobs: 2 }), []);
    const r = s.sample(row);
    const lp = logSoftmax(row);
    expect(r.logprob!.logprob).toBeCloseTo(lp[1]!, 12);
    expect(r.logprob!.top.map((t) => t.token)).toEqual([1, 3]);
  });

  it('out-of-range parameters are named', () => {
    expect(() => validateSamplingParams(params({ temperature: -1 }), 5)).toThrow(/temperature/);
    expect(() => validateSamplingParams(params({ topP: 0 }), 5)).toThrow(/top_p/);
    expect(() => validateSamplingParams(params({ logitBias: new Map([[7, 1]]) }), 5)).toThrow(
      /logit_bias names token 7/,
    );
    expect(() => validateSamplingParams(params({ maxTokens: 0 }), 5)).toThrow(/max_tokens/);
    expect(() => validateSamplingParams(params({ logprobs: 50 }), 5)).toThrow(/logprobs/);
  });
});
