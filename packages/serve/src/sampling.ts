// Per-request sampling parameters and state. Greedy, temperature, top-k and top-p run where the logits
// are (device-sampling.ts: one batched op per step, draws from a counter-based stream keyed by the
// request's seed, so a request's tokens do not depend on its batch). A request that also asks for
// logit_bias, repetition / presence / frequency penalties or min-p is sampled here on its host logits,
// in float64: bias → penalties → greedy argmax, or temperature → top-k → top-p → min-p → a draw from
// its own seeded generator. Log-probabilities are those of the model's raw distribution.
import { Rng } from '@dsv3/core';

export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  /** 0 = all tokens. */
  topK: number;
  /** 1 = all tokens. */
  topP: number;
  /** 0 = off: drop tokens whose probability is below minP times the most likely one's. */
  minP: number;
  /** Seed of the request's generator (default: drawn at random). */
  seed?: number;
  /** Subtracted once from the logit of every token generated so far (OpenAI's presence_penalty). */
  presencePenalty: number;
  /** Subtracted per occurrence from the logit of generated tokens (OpenAI's frequency_penalty). */
  frequencyPenalty: number;
  /** > 1 discourages tokens of the prompt and the output (CTRL's rule: divide positive logits, multiply negative). */
  repetitionPenalty: number;
  /** Added to the logits of these token ids. */
  logitBias: ReadonlyMap<number, number>;
  /** Most tokens to generate. */
  maxTokens: number;
  /** Finish when one of these is generated (besides the end-of-sequence ids unless ignoreEos). */
  stopTokenIds: readonly number[];
  ignoreEos: boolean;
  /** null: none; k ≥ 0: the sampled token's log-probability and the k most likely alternatives. */
  logprobs: number | null;
}

export const defaultSamplingParams: SamplingParams = {
  temperature: 1,
  topK: 0,
  topP: 1,
  minP: 0,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repetitionPenalty: 1,
  logitBias: new Map(),
  maxTokens: 16,
  stopTokenIds: [],
  ignoreEos: false,
  logprobs: null,
};

export class SamplingError extends RangeError {
  constructor(message: string) {
    super(message);
    this.name = 'SamplingError';
  }
}

/** Throws a SamplingError naming the first parameter out of its range. */
export function validateSamplingParams(p: SamplingParams, vocabSize: number): void {
  const bad = (what: string): never => {
    throw new SamplingError(what);
  };
  if (!(Number.isFinite(p.temperature) && p.temperature >= 0))
    bad(`temperature must be a finite number >= 0, got ${p.temperature}`);
  if (!(Number.isInteger(p.topK) && p.topK >= 0)) bad(`top_k must be an integer >= 0 (0 = all tokens), got ${p.topK}`);
  if (!(p.topP > 0 && p.topP <= 1)) bad(`top_p must be in (0, 1], got ${p.topP}`);
  if (!(p.minP >= 0 && p.minP <= 1)) bad(`min_p must be in [0, 1], got ${p.minP}`);
  if (p.seed !== undefined && !Number.isSafeInteger(p.seed)) bad(`seed must be an integer, got ${p.seed}`);
  if (!(Number.isFinite(p.presencePenalty) && Math.abs(p.presencePenalty) <= 2))
    bad(`presence_penalty must be in [-2, 2], got ${p.presencePenalty}`);
  if (!(Number.isFinite(p.frequencyPenalty) && Math.abs(p.frequencyPenalty) <= 2))
    bad(`frequency_penalty must be in [-2, 2], got ${p.frequencyPenalty}`);
  if (!(Number.isFinite(p.repetitionPenalty) && p.repetitionPenalty > 0))
    bad(`repetition_penalty must be a finite number > 0, got ${p.repetitionPenalty}`);
  for (const [t, b] of p.logitBias) {
    if (!(Number.isInteger(t) && t >= 0 && t < vocabSize))
      bad(`logit_bias names token ${t}, outside the vocabulary [0, ${vocabSize})`);
    if (!(Number.isFinite(b) && Math.abs(b) <= 100)) bad(`logit_bias for token ${t} must be in [-100, 100], got ${b}`);
  }
  if (!(Number.isInteger(p.maxTokens) && p.maxTokens >= 1))
    bad(`max_tokens must be an integer >= 1, got ${p.maxTokens}`);
  for (const t of p.stopTokenIds)
    if (!(Number.isInteger(t) && t >= 0 && t < vocabSize))
      bad(`stop_token_ids holds ${t}, outside the vocabulary [0, ${vocabSize})`);
  if (p.logprobs !== null && !(Number.isInteger(p.logprobs) && p.logprobs >= 0 && p.logprobs <= 20))
    bad(`logprobs / top_logprobs must be an integer in [0, 20], got ${p.logprobs}`);
}

export interface TokenLogprob {
  token: number;
  logprob: number;
  /** The most likely tokens at this position, most likely first. */
  top: { token: number; logprob: number }[];
}

export interface SampleResult {
  token: number;
  logprob?: TokenLogprob;
}

let unseeded = 0x9e3779b9;

/** A u32 key of a safe-integer seed (seeds below 2^32 map to themselves). */
export function seedKey(seed: number): number {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 0x100000000) | 0;
  return (lo ^ Math.imul(hi, 0x9e3779b1)) >>> 0;
}

/** Index of the largest value (the first on ties). */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  let bv = -Infinity;
  for (let i = 0; i < x.length; i++) {
    if (x[i]! > bv) {
      bv = x[i]!;
      best = i;
    }
  }
  return best;
}

/** log-softmax of a row in float64. */
export function logSoftmax(row: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i]! > max) max = row[i]!;
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(row.length);
  for (let i = 0; i < row.length; i++) out[i] = row[i]! - lse;
  return out;
}

function topIndices(x: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: x.length }, (_, i) => i);
  idx.sort((a, b) => x[b]! - x[a]! || a - b);
  return idx.slice(0, k);
}

/** One request's sampler: its parameters, generator and the token counts its penalties need. */
export class RequestSampler {
  readonly params: SamplingParams;
  /** The u32 seed of the request's device stream. */
  readonly deviceSeed: number;
  private readonly rng: Rng;
  private readonly counts = new Map<number, number>();
  private readonly seen: Set<number>;
  private draws = 0;

  constructor(params: SamplingParams, promptIds: readonly number[]) {
    this.params = params;
    const seed = params.seed ?? (unseeded = (unseeded * 1103515245 + 12345 + Date.now()) >>> 0);
    this.rng = new Rng(seed);
    this.deviceSeed = seedKey(seed);
    this.seen = params.repetitionPenalty !== 1 ? new Set(promptIds) : new Set();
  }

  /** Whether the device sampling ops cover this request (no logit bias, penalties or min-p). */
  get onDevice(): boolean {
    const p = this.params;
    return (
      p.logitBias.size === 0 &&
      p.presencePenalty === 0 &&
      p.frequencyPenalty === 0 &&
      p.repetitionPenalty === 1 &&
      p.minP === 0
    );
  }

  /**
   * Reserves n draws of the request's device stream (a sample takes 1, verifying K drafts K + 1) and
   * returns the counter of the first: the stream advances with the request's own history only.
   */
  takeDraws(n: number): number {
    const c = this.draws;
    this.draws = (this.draws + n) >>> 0;
    return c;
  }

  get greedy(): boolean {
    return this.params.temperature === 0;
  }

  /** Whether this request's choice is a plain argmax of the raw logits (what greedy verification needs). */
  get plainGreedy(): boolean {
    const p = this.params;
    return (
      this.greedy &&
      p.logitBias.size === 0 &&
      p.presencePenalty === 0 &&
      p.frequencyPenalty === 0 &&
      p.repetitionPenalty === 1
    );
  }

  /** Records a generated token (penalties count it from now on). */
  observe(token: number): void {
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
    if (this.params.repetitionPenalty !== 1) this.seen.add(token);
  }

  /** The logits after bias and penalties (a float64 copy). */
  processed(row: ArrayLike<number>): Float64Array {
    const p = this.params;
    const x = Float64Array.from(row);
    for (const [t, b] of p.logitBias) x[t]! += b;
    if (p.repetitionPenalty !== 1)
      for (const t of this.seen) x[t] = x[t]! > 0 ? x[t]! / p.repetitionPenalty : x[t]! * p.repetitionPenalty;
    if (p.presencePenalty || p.frequencyPenalty)
      for (const [t, c] of this.counts) x[t]! -= p.presencePenalty + p.frequencyPenalty * c;
    return x;
  }

  /** Chooses the next token from one row of raw logits and records it. */
  sample(row: ArrayLike<number>): SampleResult {
    return this.emit(row, this.choose(this.processed(row)));
  }

  /**
   * Speculative verification of a greedy draft (a one-hot proposal) against one row of raw logits:
   * greedy requests accept it when it is their argmax; sampling requests accept it with probability
   * p(draft) and otherwise draw from p without it — exactly p's distribution either way. Returns the
   * emitted token (the draft when accepted) and records it.
   */
  verify(row: ArrayLike<number>, draft: number): SampleResult & { accepted: boolean } {
    const x = this.processed(row);
    if (this.greedy) {
      const t = argmax(x);
      return { ...this.emit(row, t), accepted: t === draft };
    }
    const d = this.distribution(x);
    const k = d.order.indexOf(draft);
    const pDraft = k >= 0 ? d.prob[k]! / d.total : 0;
    if (pDraft > 0 && this.rng.uniform() < pDraft) return { ...this.emit(row, draft), accepted: true };
    if (k >= 0) {
      d.total -= d.prob[k]!;
      d.prob[k] = 0;
    }
    return { ...this.emit(row, d.total > 0 ? this.draw(d) : draft), accepted: false };
  }

  /** Records an emitted token; with logprobs asked, `row` (its raw logits) gives its log-probability. */
  emit(row: ArrayLike<number> | null, token: number): SampleResult {
    this.observe(token);
    if (this.params.logprobs === null) return { token };
    if (!row) throw new Error('RequestSampler.emit: log-probabilities need the raw logits row');
    const lp = logSoftmax(row);
    const top = topIndices(lp, this.params.logprobs).map((t) => ({ token: t, logprob: lp[t]! }));
    return { token, logprob: { token, logprob: lp[token]!, top } };
  }

  private choose(x: Float64Array): number {
    return this.greedy ? argmax(x) : this.draw(this.distribution(x));
  }

  private draw(d: Distribution): number {
    let u = this.rng.uniform() * d.total;
    let last = d.order[0]!;
    for (let k = 0; k < d.order.length; k++) {
      if (d.prob[k]! <= 0) continue;
      last = d.order[k]!;
      u -= d.prob[k]!;
      if (u < 0) return last;
    }
    return last;
  }

  /** The kept tokens (most likely first) and their unnormalized probabilities after temperature, top-k, top-p, min-p. */
  private distribution(x: Float64Array): Distribution {
    const p = this.params;
    const V = x.length;
    let order: number[] = Array.from({ length: V }, (_, i) => i);
    order.sort((a, b) => x[b]! - x[a]! || a - b);
    if (p.topK > 0 && p.topK < V) order = order.slice(0, p.topK);
    const max = x[order[0]!]!;
    if (!Number.isFinite(max)) throw new SamplingError('no finite logit to sample from');
    const prob = order.map((i) => Math.exp((x[i]! - max) / p.temperature));
    let total = prob.reduce((s, v) => s + v, 0);
    let n = order.length;
    if (p.topP < 1) {
      let cum = 0;
      let k = 0;
      while (k < n && (k === 0 || cum < p.topP * total)) cum += prob[k++]!;
      n = k;
    }
    if (p.minP > 0) {
      const floor = p.minP * prob[0]!;
      let k = 1;
      while (k < n && prob[k]! >= floor) k++;
      n = k;
    }
    total = 0;
    for (let k = 0; k < n; k++) total += prob[k]!;
    return { order: order.slice(0, n), prob: prob.slice(0, n), total };
  }
}

interface Distribution {
  order: number[];
  prob: number[];
  total: number;
}
