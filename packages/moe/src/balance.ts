// Load balancing of DeepSeekMoE on typed arrays: expert loads, MaxVio, the auxiliary-loss-free bias
// update and the complementary sequence-wise balance loss (value and gradient).

function checkIndices(indices: Int32Array, numExperts: number): void {
  if (!Number.isInteger(numExperts) || numExperts < 1) {
    throw new Error(`numExperts must be a positive integer, got ${numExperts}`);
  }
  for (let i = 0; i < indices.length; i++) {
    const e = indices[i] as number;
    if (e < 0 || e >= numExperts) throw new Error(`expert index ${e} at position ${i} is outside [0, ${numExperts})`);
  }
}

/** Tokens routed to each expert: load[e] = #{(t, j) : indices[t, j] = e}. `indices` is any [T, k] layout. */
export function expertLoad(indices: Int32Array, numExperts: number): Float64Array {
  checkIndices(indices, numExperts);
  const load = new Float64Array(numExperts);
  for (let i = 0; i < indices.length; i++) load[indices[i] as number]! += 1;
  return load;
}

/**
 * MaxVio = (max_i load_i − mean load) / mean load. 0 for a perfectly balanced load; 0 as well when
 * nothing was routed (all loads zero). Throws on an empty load vector.
 */
export function maxVio(load: ArrayLike<number>): number {
  const n = load.length;
  if (n === 0) throw new Error('maxVio of an empty load vector');
  let sum = 0;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = load[i] as number;
    if (!Number.isFinite(v) || v < 0) throw new Error(`load of expert ${i} is not a finite non-negative number (${v})`);
    sum += v;
    if (v > max) max = v;
  }
  if (sum === 0) return 0;
  const mean = sum / n;
  return (max - mean) / mean;
}

/**
 * Running MaxVio: records the MaxVio of every batch and of the loads accumulated since creation
 * (or the last `reset()`), as the loss-free paper reports both MaxVio_batch and MaxVio_global.
 */
export class MaxVioTracker {
  readonly numExperts: number;
  /** Accumulated loads. */
  readonly total: Float64Array;
  /** MaxVio of each batch passed to `update`, in order. */
  readonly history: number[] = [];
  private steps = 0;

  constructor(numExperts: number) {
    if (!Number.isInteger(numExperts) || numExperts < 1) {
      throw new Error(`numExperts must be a positive integer, got ${numExperts}`);
    }
    this.numExperts = numExperts;
    this.total = new Float64Array(numExperts);
  }

  /** Adds one batch's loads; returns that batch's MaxVio. */
  update(load: ArrayLike<number>): number {
    if (load.length !== this.numExperts) {
      throw new Error(`load length ${load.length} != numExperts=${this.numExperts}`);
    }
    const v = maxVio(load);
    for (let i = 0; i < this.numExperts; i++) this.total[i]! += load[i] as number;
    this.history.push(v);
    this.steps++;
    return v;
  }

  /** Adds one batch given as routed indices. */
  updateFromIndices(indices: Int32Array): number {
    return this.update(expertLoad(indices, this.numExperts));
  }

  /** MaxVio of the last batch (NaN before any update). */
  get batch(): number {
    return this.history.length === 0 ? NaN : (this.history[this.history.length - 1] as number);
  }

  /** MaxVio of the accumulated loads. */
  get global(): number {
    return maxVio(this.total);
  }

  /** Mean of the per-batch MaxVio values so far (NaN before any update). */
  get meanBatch(): number {
    if (this.history.length === 0) return NaN;
    let s = 0;
    for (const v of this.history) s += v;
    return s / this.history.length;
  }

  get numSteps(): number {
    return this.steps;
  }

  reset(): void {
    this.total.fill(0);
    this.history.length = 0;
    this.steps = 0;
  }
}

export interface UpdateBiasOptions {
  /** Write the result into `bias` (and return it) instead of a new array. Default false. */
  inPlace?: boolean;
}

/**
 * Auxiliary-loss-free bias update, once per step over the loads of the whole batch:
 *   b_i += gamma * sign(mean load − load_i)
 * (overloaded experts go down by gamma, underloaded up, exactly-average ones stay). Computed in float32
 * like the bias parameter. Returns a new Float32Array unless `inPlace`, in which case `bias` is updated
 * and returned. V3 uses gamma = 0.001 (0 late in training).
 */
export function updateBias(
  bias: Float32Array,
  load: ArrayLike<number>,
  gamma: number,
  options: UpdateBiasOptions = {},
): Float32Array {
  const n = bias.length;
  if (load.length !== n) throw new Error(`load length ${load.length} != bias length ${n}`);
  if (!Number.isFinite(gamma) || gamma < 0) throw new Error(`gamma must be a finite non-negative number, got ${gamma}`);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const v = load[i] as number;
    if (!Number.isFinite(v)) throw new Error(`load of expert ${i} is not finite (${v})`);
    sum += v;
  }
  const mean = sum / n;
  const out = options.inPlace === true ? bias : new Float32Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = (bias[i] as number) + gamma * Math.sign(mean - (load[i] as number));
  }
  return out;
}

export interface SeqBalanceLossOptions {
  /** Number of experts N_r (row length of the scores). */
  numExperts: number;
  /** K_r: experts per token (row length of the indices). */
  k: number;
  /** alpha (V3: 0.0001). */
  alpha: number;
  /**
   * Tokens per sequence; the rows are consecutive sequences of this length. Default: all rows are one
   * sequence. The loss is computed per sequence and averaged over the sequences.
   */
  seqLen?: number | undefined;
}

export interface SeqBalanceLossResult {
  /** L = mean over sequences of alpha * Σ_i f_i P_i. */
  loss: number;
  /** dL/ds [T, E] with f treated as a constant (it comes from the non-differentiable top-k). */
  grad: Float64Array;
  /** f_i per sequence, [numSeqs, E]. */
  f: Float64Array;
  /** P_i per sequence, [numSeqs, E]. */
  P: Float64Array;
}

/**
 * Complementary sequence-wise balance loss of DeepSeek-V3. For one sequence of T tokens:
 *   f_i = N_r / (K_r T) Σ_t 1[i ∈ topk(t)]
 *   P_i = (1/T) Σ_t s_{i,t} / Σ_j s_{j,t}
 *   L   = alpha Σ_i f_i P_i
 * `scores` are the affinities s (sigmoid outputs, without bias) [T, E]; `indices` the chosen experts
 * [T, k]. With several sequences (`seqLen`), L is the mean of the per-sequence losses (as in DeepSeek's
 * V2 training gate, `(ce * scores.mean(1)).sum(1).mean() * alpha`).
 *
 * Gradient (f constant), token t of sequence b, S_t = Σ_j s_{j,t}, B sequences:
 *   dL/ds_{j,t} = alpha / (B T S_t) * (f_j − Σ_i f_i s_{i,t} / S_t)
 * Everything is computed in float64.
 */
export function sequenceBalanceLoss(
  scores: Float32Array | Float64Array,
  indices: Int32Array,
  opts: SeqBalanceLossOptions,
): SeqBalanceLossResult {
  const E = opts.numExperts;
  const k = opts.k;
  if (!Number.isInteger(E) || E < 1) throw new Error(`numExperts must be a positive integer, got ${E}`);
  if (!Number.isInteger(k) || k < 1 || k > E) throw new Error(`k must be an integer in [1, ${E}], got ${k}`);
  if (scores.length % E !== 0) throw new Error(`scores length ${scores.length} is not a multiple of numExperts=${E}`);
  const T = scores.length / E;
  if (indices.length !== T * k) throw new Error(`indices length ${indices.length} != T*k = ${T * k}`);
  if (T === 0) throw new Error('sequenceBalanceLoss needs at least one token');
  const L = opts.seqLen ?? T;
  if (!Number.isInteger(L) || L < 1 || T % L !== 0) {
    throw new Error(`seqLen=${L} must be a positive integer dividing the number of tokens ${T}`);
  }
  checkIndices(indices, E);
  const B = T / L;
  const f = new Float64Array(B * E);
  const P = new Float64Array(B * E);
  const grad = new Float64Array(T * E);
  const rowSum = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let e = 0; e < E; e++) {
      const v = scores[t * E + e] as number;
      if (!Number.isFinite(v)) throw new Error(`score of token ${t}, expert ${e} is not finite (${v})`);
      s += v;
    }
    if (!(s > 0)) throw new Error(`scores of token ${t} do not have a positive sum (${s})`);
    rowSum[t] = s;
  }
  let loss = 0;
  for (let b = 0; b < B; b++) {
    const fb = b * E;
    for (let t = b * L; t < (b + 1) * L; t++) {
      for (let j = 0; j < k; j++) f[fb + (indices[t * k + j] as number)]! += 1;
      const S = rowSum[t] as number;
      for (let e = 0; e < E; e++) P[fb + e]! += (scores[t * E + e] as number) / S;
    }
    let lb = 0;
    for (let e = 0; e < E; e++) {
      f[fb + e] = ((f[fb + e] as number) * E) / (k * L);
      P[fb + e] = (P[fb + e] as number) / L;
      lb += (f[fb + e] as number) * (P[fb + e] as number);
    }
    loss += opts.alpha * lb;
    for (let t = b * L; t < (b + 1) * L; t++) {
      const S = rowSum[t] as number;
      let fs = 0;
      for (let e = 0; e < E; e++) fs += (f[fb + e] as number) * (scores[t * E + e] as number);
      fs /= S;
      const c = opts.alpha / (B * L * S);
      for (let e = 0; e < E; e++) grad[t * E + e] = c * ((f[fb + e] as number) - fs);
    }
  }
  return { loss: loss / B, grad, f, P };
}
