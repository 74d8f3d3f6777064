// A small seeded sampler shared by plain and speculative decoding: temperature → top-k → top-p on
// host logits, in float64. Temperature 0 means greedy (a one-hot distribution at the argmax).
import { Rng } from '@dsv3/core';

export interface SamplingOptions {
  /** Softmax temperature; 0 = greedy (default 1). */
  temperature?: number;
  /** Keep only the k most likely tokens (0 or undefined = all). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (1 or undefined = all). */
  topP?: number;
}

export function checkSampling(o: SamplingOptions): void {
  const t = o.temperature ?? 1;
  if (!(Number.isFinite(t) && t >= 0)) throw new RangeError(`temperature must be a finite number >= 0, got ${t}`);
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0))
    throw new RangeError(`topK must be a non-negative integer, got ${o.topK}`);
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1))
    throw new RangeError(`topP must be in (0, 1], got ${o.topP}`);
}

export function isGreedy(o: SamplingOptions): boolean {
  return (o.temperature ?? 1) === 0;
}

/** Index of the largest value (the first on ties; NaN never wins). */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  let bv = -Infinity;
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    if (v > bv) {
      bv = v;
      best = i;
    }
  }
  return best;
}

/** Indices of x by value descending, ties by index ascending. */
function orderDesc(x: ArrayLike<number>, among?: readonly number[]): number[] {
  const idx = among ? [...among] : Array.from({ length: x.length }, (_, i) => i);
  return idx.sort((a, b) => x[b]! - x[a]! || a - b);
}

/** The sampling distribution over the vocabulary that `o` makes of `logits` (float64, sums to 1). */
export function probabilities(logits: ArrayLike<number>, o: SamplingOptions = {}): Float64Array {
  checkSampling(o);
  const v = logits.length;
  if (v === 0) throw new RangeError('probabilities of an empty logits row');
  const out = new Float64Array(v);
  if (isGreedy(o)) {
    out[argmax(logits)] = 1;
    return out;
  }
  const t = o.temperature ?? 1;
  let keep: number[] | null = null;
  if (o.topK && o.topK < v) keep = orderDesc(logits).slice(0, o.topK);
  let max = -Infinity;
  const each = (f: (i: number) => void): void => {
    if (keep) for (const i of keep) f(i);
    else for (let i = 0; i < v; i++) f(i);
  };
  each((i) => {
    if (logits[i]! > max) max = logits[i]!;
  });
  if (max === -Infinity || Number.isNaN(max)) throw new RangeError('probabilities: no finite logit to sample from');
  let total = 0;
  each((i) => {
    const e = Math.exp((logits[i]! - max) / t);
    out[i] = e;
    total += e;
  });
  for (let i = 0; i < v; i++) out[i]! /= total;
  if (o.topP !== undefined && o.topP < 1) {
    const order = orderDesc(out, keep ?? undefined);
    let cum = 0;
    let n = 0;
    while (n < order.length && (n === 0 || cum < o.topP)) cum += out[order[n++]!]!;
    for (let j = n; j < order.length; j++) out[order[j]!] = 0;
    for (let i = 0; i < v; i++) out[i]! /= cum;
  }
  return out;
}

/** Draws an index from a (not necessarily normalized) non-negative distribution. */
export function sampleFrom(probs: ArrayLike<number>, rng: Rng): number {
  let total = 0;
  let last = -1;
  for (let i = 0; i < probs.length; i++) {
    const p = probs[i]!;
    if (p > 0) {
      total += p;
      last = i;
    }
  }
  if (last < 0) throw new RangeError('sampleFrom: the distribution has no mass');
  const u = rng.uniform() * total;
  let cum = 0;
  for (let i = 0; i < probs.length; i++) {
    const p = probs[i]!;
    if (p <= 0) continue;
    cum += p;
    if (u < cum) return i;
  }
  return last;
}

/** Seeded sampling: `sample(logits)` draws a token (the argmax when greedy; no randomness used then). */
export class Sampler {
  readonly options: Readonly<SamplingOptions>;
  readonly rng: Rng;
  constructor(opts: SamplingOptions & { seed?: number; rng?: Rng } = {}) {
    const { seed, rng, ...o } = opts;
    checkSampling(o);
    this.options = Object.freeze({ ...o });
    this.rng = rng ?? new Rng(seed ?? 0);
  }
  get greedy(): boolean {
    return isGreedy(this.options);
  }
  probs(logits: ArrayLike<number>): Float64Array {
    return probabilities(logits, this.options);
  }
  sample(logits: ArrayLike<number>): number {
    return this.greedy ? argmax(logits) : sampleFrom(this.probs(logits), this.rng);
  }
}
