// Speculative decoding: greedy equivalence with plain greedy decoding, cache rollback, and the target
// distribution under stochastic acceptance (chi-square).
import { describe, expect, it } from 'vitest';
import { narrow, noGrad, Rng, tensor, type Tensor } from '@dsv3/core';
import {
  AcceptanceStats,
  argmax,
  generate,
  probabilities,
  SpeculativeDecoder,
  verifyGreedy,
  verifyStochastic,
  type SamplingOptions,
  type SpeculativeModel,
  type StepOutput,
} from '../src/index.js';
import { KVCache, TinyCausalLM, type TinySequence } from '../src/testing/index.js';
import { MarkovModel } from './markov.js';
import { chiSquareTest } from './helpers.js';

function randomPrompt(n: number, vocab: number, seed: number): number[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => rng.integer(0, vocab));
}

/** Plain greedy decoding by full recomputation (no cache at all). */
function greedyNoCache(model: TinyCausalLM, prompt: number[], n: number): number[] {
  const toks = [...prompt];
  noGrad(() => {
    for (let i = 0; i < n; i++) {
      const { logits } = model.trunk(tensor(Int32Array.from(toks), { shape: [1, toks.length], dtype: 'i32' }));
      const v = model.vocabSize;
      toks.push(argmax(logits.dataSync().subarray((toks.length - 1) * v, toks.length * v)));
    }
  });
  return toks.slice(prompt.length);
}

function maxAbsDiff(a: Tensor | null, b: Tensor | null): number {
  expect(a?.shape).toEqual(b?.shape);
  if (!a || !b) return 0;
  const x = a.dataSync();
  const y = b.dataSync();
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]! - y[i]!));
  return m;
}

/** Every MTP cache of `seq` equals a fresh pass of that module over the real tokens it covers. */
function checkMtpCaches(model: TinyCausalLM, seq: TinySequence, tokens: number[], tol: number): void {
  noGrad(() => {
    const dim = model.config.dim;
    const ids = (xs: number[]): Tensor => tensor(Int32Array.from(xs), { shape: [1, xs.length], dtype: 'i32' });
    let prev = model.trunk(ids(tokens)).hidden;
    for (let d = 0; d < model.numMtpModules; d++) {
      const len = seq.mtp[d]!.length;
      // module d holds positions i < len, each fed t_{i+d+1}: all real tokens
      expect(len + d + 1).toBeLessThanOrEqual(tokens.length);
      if (len === 0) break;
      const fresh = new KVCache();
      const out = model
        .mtp!.module(d)
        .forward(prev.slice([0, 0, 0], [1, len, dim]), ids(tokens.slice(d + 1, d + 1 + len)), {
          startPos: 0,
          cache: fresh,
        });
      expect(maxAbsDiff(seq.mtp[d]!.k, fresh.k)).toBeLessThanOrEqual(tol);
      expect(maxAbsDiff(seq.mtp[d]!.v, fresh.v)).toBeLessThanOrEqual(tol);
      prev = out.hidden;
    }
  });
}

/**
 * Wraps a TinyCausalLM: caches and hidden states are the model's own, but with probability `hit` a
 * draft's logits are replaced by a one-hot at the true greedy continuation (found by full recomputation),
 * so that runs see long accepted drafts and bonus tokens, not only rejections.
 */
class OracleDrafts implements SpeculativeModel<TinySequence> {
  private readonly rng: Rng;
  private mainTokens: number[] = [];
  private draftCtx: number[] = [];
  constructor(
    readonly inner: TinyCausalLM,
    readonly hit: number,
    seed: number,
  ) {
    this.rng = new Rng(seed);
  }
  get vocabSize(): number {
    return this.inner.vocabSize;
  }
  get numMtpModules(): number {
    return this.inner.numMtpModules;
  }
  async forward(seq: TinySequence, tokens: readonly number[]): Promise<StepOutput> {
    this.mainTokens.push(...tokens);
    this.draftCtx = [];
    return this.inner.forward(seq, tokens);
  }
  truncate(seq: TinySequence, length: number): void {
    this.mainTokens.length = length;
    this.inner.truncate(seq, length);
  }
  async draft(seq: TinySequence, depth: number, hidden: Tensor, tokens: readonly number[]): Promise<StepOutput> {
    const out = await this.inner.draft(seq, depth, hidden, tokens);
    this.draftCtx.push(tokens[tokens.length - 1]!); // t_m, then d_1, d_2, ...
    if (this.rng.uniform() >= this.hit) return out;
    const next = greedyNoCache(this.inner, [...this.mainTokens, ...this.draftCtx], 1)[0]!;
    const v = this.vocabSize;
    const logits = Float64Array.from((out.logits as Tensor).dataSync());
    logits.fill(0, logits.length - v);
    logits[logits.length - v + next] = 10;
    return { hidden: out.hidden, logits };
  }
  truncateDraft(seq: TinySequence, depth: number, length: number): void {
    this.inner.truncateDraft(seq, depth, length);
  }
}

describe('greedy speculative decoding', () => {
  it('emits exactly the tokens of plain greedy decoding (random models, many seeds, K = 1 and 2)', async () => {
    const total = new AcceptanceStats();
    for (let seed = 0; seed < 10; seed++) {
      const model = new TinyCausalLM({
        vocabSize: 6 + (seed % 5),
        dim: 16,
        layers: 2,
        heads: 2,
        mtpDepth: 2,
        dtype: 'f64',
        seed,
        embedStd: 0.5 + 0.2 * (seed % 3),
      });
      const prompt = randomPrompt(3 + (seed % 4), model.vocabSize, 1000 + seed);
      const n = 20;
      const plain = await generate(model, model.newSequence(), prompt, { maxNewTokens: n, draftTokens: 0 });
      expect(plain.stats.mainForwards).toBe(n);
      if (seed < 3) expect(plain.tokens).toEqual(greedyNoCache(model, prompt, n));
      for (const k of [1, 2]) {
        const seq = model.newSequence();
        const spec = await generate(model, seq, prompt, { maxNewTokens: n, draftTokens: k, stats: undefined });
        expect(spec.tokens, `seed ${seed}, K = ${k}`).toEqual(plain.tokens);
        expect(spec.stats.proposed.length).toBe(k);
        total.merge(spec.stats);
        const oracle = new OracleDrafts(model, 0.8, seed);
        const seq2 = model.newSequence();
        const withOracle = await generate(oracle, seq2, prompt, { maxNewTokens: n, draftTokens: k });
        expect(withOracle.tokens, `seed ${seed}, K = ${k}, oracle drafts`).toEqual(plain.tokens);
        checkMtpCaches(model, seq2, withOracle.decoder.tokens, 1e-12);
        total.merge(withOracle.stats);
      }
    }
    // the runs exercised rejections, partial and full acceptance (bonus tokens)
    expect(total.accepted[0]).toBeGreaterThan(0);
    expect(total.accepted[1]).toBeGreaterThan(0);
    expect(total.accepted[0]).toBeLessThan(total.proposed[0]!);
  });

  it('step by step: main cache = all tokens but the last, MTP caches = fresh passes over real tokens', async () => {
    const model = new TinyCausalLM({ vocabSize: 5, dim: 12, layers: 2, heads: 2, mtpDepth: 2, dtype: 'f64', seed: 77 });
    const seq = model.newSequence();
    const dec = new SpeculativeDecoder(model, seq, { draftTokens: 2 });
    await dec.prefill(randomPrompt(4, 5, 78));
    for (let s = 0; s < 8; s++) {
      await dec.step();
      expect(seq.main[0]!.length).toBe(dec.tokens.length - 1);
      checkMtpCaches(model, seq, dec.tokens, 1e-12);
    }
    expect(dec.stats.steps).toBe(8);
  });
});

describe('cache rollback', () => {
  for (const dtype of ['f64', 'f32'] as const) {
    it(`truncate leaves the cache identical to one that never saw the rejected tokens (${dtype})`, async () => {
      const model = new TinyCausalLM({ vocabSize: 9, dim: 16, layers: 3, heads: 2, mtpDepth: 1, dtype, seed: 5 });
      const prompt = randomPrompt(6, 9, 6);
      const a = model.newSequence();
      const b = model.newSequence();
      await model.forward(a, prompt);
      await model.forward(b, prompt);
      const before = a.main.map((c) => ({ k: c.k!, v: c.v! }));
      await model.forward(a, [3, 1, 4, 1]); // x + three drafts
      model.truncate(a, prompt.length + 1); // all drafts rejected: keep x only
      await model.forward(b, [3]);
      const tol = dtype === 'f64' ? 0 : 1e-6;
      a.main.forEach((c, l) => {
        expect(c.length).toBe(prompt.length + 1);
        expect(maxAbsDiff(c.k, b.main[l]!.k)).toBeLessThanOrEqual(tol);
        expect(maxAbsDiff(c.v, b.main[l]!.v)).toBeLessThanOrEqual(tol);
        // the positions that existed before the verify pass are untouched
        expect(maxAbsDiff(narrow(c.k!, 2, 0, prompt.length), before[l]!.k)).toBe(0);
        expect(maxAbsDiff(narrow(c.v!, 2, 0, prompt.length), before[l]!.v)).toBe(0);
      });
      // and decoding continues identically
      const ya = await model.forward(a, [2, 7]);
      const yb = await model.forward(b, [2, 7]);
      expect(maxAbsDiff(ya.logits as Tensor, yb.logits as Tensor)).toBeLessThanOrEqual(dtype === 'f64' ? 0 : 1e-5);
      // MTP module caches roll back the same way
      const h = ya.hidden;
      await model.draft(a, 0, h, [7, 1]);
      model.truncateDraft(a, 0, 1);
      await model.draft(b, 0, h.slice([0, 0], [1, h.shape[1]!]), [7]);
      expect(maxAbsDiff(a.mtp[0]!.k, b.mtp[0]!.k)).toBeLessThanOrEqual(tol);
    });
  }
});

describe('stochastic acceptance', () => {
  it('verifyStochastic reproduces p for sampled, greedy (one-hot) and identical drafts (chi-square, 8 tokens)', () => {
    const rng = new Rng(2024);
    const p = probabilities([0.3, -1, 2, 0.5, 1.2, -0.4, 0.9, 0]);
    const qs: [string, Float64Array | null, (r: Rng) => number][] = [
      ['q ≠ p', probabilities([1.5, 0.2, -0.3, 0.5, 2, 0, -1, 0.4]), (_r) => 0],
      ['greedy draft', null, () => 4],
      ['q = p', p, () => 0],
    ];
    for (const [name, q, greedyDraft] of qs) {
      const counts = new Array(8).fill(0);
      let accepted = 0;
      for (let t = 0; t < 40000; t++) {
        const x = q ? pick(q, rng) : greedyDraft(rng);
        const v = verifyStochastic([x], [q], () => p, rng);
        accepted += v.accepted;
        counts[v.accepted ? x : v.next]++;
      }
      const { p: pv } = chiSquareTest(counts, p);
      expect(pv, `${name}: counts ${counts.join(' ')}`).toBeGreaterThan(0.001);
      if (q === p) expect(accepted).toBe(40000);
    }
    function pick(q: Float64Array, r: Rng): number {
      let u = r.uniform();
      for (let i = 0; i < q.length; i++) if ((u -= q[i]!) < 0) return i;
      return q.length - 1;
    }
  });

  const cases: [string, SamplingOptions, 'greedy' | undefined, number][] = [
    ['T = 1, sampled drafts, K = 2', { temperature: 1 }, undefined, 2],
    ['T = 0.7, top-k 6, top-p 0.9, greedy drafts, K = 2', { temperature: 0.7, topK: 6, topP: 0.9 }, 'greedy', 2],
    ['T = 1.3, sampled drafts, K = 1', { temperature: 1.3 }, undefined, 1],
  ];
  for (const [name, sampling, draftSampling, k] of cases) {
    it(`end to end, the first three tokens follow the target distribution: ${name}`, async () => {
      const V = 8;
      const model = new MarkovModel(V, 2, 99);
      const prompt = [3, 5];
      const stats = new AcceptanceStats();
      const trials = 12000;
      const counts = new Array(V * V * V).fill(0);
      for (let t = 0; t < trials; t++) {
        const seq = model.newSequence();
        const r = await generate(model, seq, prompt, {
          maxNewTokens: 3,
          draftTokens: k,
          sampling,
          draftSampling,
          seed: 7000 + t,
          stats,
        });
        const [x1, x2, x3] = r.tokens as [number, number, number];
        counts[(x1 * V + x2) * V + x3]++;
        // bookkeeping: module d's cache holds t_{i+d+1} at position i, all real tokens
        const all = [...prompt, ...r.tokens];
        seq.mtp.forEach((c, d) => c.forEach((tok, i) => expect(tok).toBe(all[i + d + 1])));
      }
      // exact law: p(x1 | 5) p(x2 | x1) p(x3 | x2) under the sampler's transforms
      const P = model.P.map((row) => probabilities(row, sampling));
      const expected = new Float64Array(V * V * V);
      for (let a = 0; a < V; a++)
        for (let b = 0; b < V; b++)
          for (let c = 0; c < V; c++) expected[(a * V + b) * V + c] = P[5]![a]! * P[a]![b]! * P[b]![c]!;
      const res = chiSquareTest(counts, expected);
      expect(res.p, `chi-square ${res.stat.toFixed(1)} on ${res.df} df`).toBeGreaterThan(0.001);
      // both outcomes happened at every draft position
      for (let j = 0; j < k; j++) {
        expect(stats.accepted[j]).toBeGreaterThan(0);
        expect(stats.accepted[j]).toBeLessThan(stats.reached[j]!);
      }
    });
  }
});

describe('verification helpers and statistics', () => {
  it('verifyGreedy accepts the matching prefix and emits the main argmax after it', () => {
    const rows = Float64Array.from([0, 5, 1, /**/ 9, 0, 0, /**/ 0, 0, 3]);
    expect(verifyGreedy([1, 0], rows, 3)).toEqual({ accepted: 2, next: 2 });
    expect(verifyGreedy([1, 2], rows, 3)).toEqual({ accepted: 1, next: 0 });
    expect(verifyGreedy([0, 0], rows, 3)).toEqual({ accepted: 0, next: 1 });
  });

  it('per-position acceptance rates', () => {
    const s = new AcceptanceStats();
    s.record(2, 0);
    s.record(2, 1);
    s.record(2, 2);
    s.record(2, 2);
    expect(s.proposed).toEqual([4, 4]);
    expect(s.accepted).toEqual([3, 2]);
    expect(s.reached).toEqual([4, 3]);
    expect(s.rate(0)).toBe(0.75);
    expect(s.rate(1)).toBe(0.5);
    expect(s.conditionalRate(1)).toBeCloseTo(2 / 3, 15);
    expect(s.tokensPerStep).toBe((1 + 2 + 3 + 3) / 4);
  });

  it('rejects bad draft depths', () => {
    const model = new MarkovModel(4, 1, 1);
    expect(() => new SpeculativeDecoder(model, model.newSequence(), { draftTokens: 2 })).toThrow(/draftTokens/);
  });
});
