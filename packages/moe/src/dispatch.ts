// Dispatch plan of a routed batch: which (token, slot) pairs go to which expert, laid out contiguously
// per expert for a grouped GEMM, and how to bring the expert outputs back. No token is ever dropped.

export interface DispatchPlan {
  numTokens: number;
  k: number;
  numExperts: number;
  /** [E] number of (token, slot) pairs routed to each expert. */
  counts: Int32Array;
  /**
   * [E + 1] exclusive prefix sum of `counts`: expert e's rows are [offsets[e], offsets[e+1]) of the
   * sorted order; offsets[E] = T*k.
   */
  offsets: Int32Array;
  /**
   * [T*k] sorted position -> pair index p = t*k + j. Sorted by expert, and within an expert by token
   * (then slot), i.e. a stable sort of the pairs by expert.
   */
  permutation: Int32Array;
  /** [T*k] pair index -> sorted position (inverse of `permutation`). */
  inverse: Int32Array;
  /** [T*k] token of each sorted row (= floor(permutation / k)): the rows to gather. */
  sortedTokens: Int32Array;
  /** [T*k] expert of each sorted row (non-decreasing). */
  sortedExperts: Int32Array;
}

/** Builds the plan from routed indices [T, k] (a counting sort, O(T*k + E)). */
export function dispatchPlan(indices: Int32Array, k: number, numExperts: number): DispatchPlan {
  if (!Number.isInteger(k) || k < 1) throw new Error(`k must be a positive integer, got ${k}`);
  if (!Number.isInteger(numExperts) || numExperts < 1) {
    throw new Error(`numExperts must be a positive integer, got ${numExperts}`);
  }
  if (indices.length % k !== 0) throw new Error(`indices length ${indices.length} is not a multiple of k=${k}`);
  const n = indices.length;
  const T = n / k;
  const E = numExperts;
  const counts = new Int32Array(E);
  for (let p = 0; p < n; p++) {
    const e = indices[p] as number;
    if (e < 0 || e >= E) {
      throw new Error(`expert index ${e} of token ${Math.floor(p / k)} (slot ${p % k}) is outside [0, ${E})`);
    }
    counts[e]! += 1;
  }
  const offsets = new Int32Array(E + 1);
  for (let e = 0; e < E; e++) offsets[e + 1] = (offsets[e] as number) + (counts[e] as number);
  const cursor = offsets.slice(0, E);
  const permutation = new Int32Array(n);
  const inverse = new Int32Array(n);
  const sortedTokens = new Int32Array(n);
  const sortedExperts = new Int32Array(n);
  for (let p = 0; p < n; p++) {
    const e = indices[p] as number;
    const pos = cursor[e] as number;
    cursor[e] = pos + 1;
    permutation[pos] = p;
    inverse[p] = pos;
    sortedTokens[pos] = (p / k) | 0;
    sortedExperts[pos] = e;
  }
  return { numTokens: T, k, numExperts: E, counts, offsets, permutation, inverse, sortedTokens, sortedExperts };
}

/** Gathers the token rows x [T, D] into the dispatch order: out [T*k, D], row r = x[sortedTokens[r]]. */
export function permuteRows(x: Float32Array, dim: number, plan: DispatchPlan): Float32Array {
  if (x.length !== plan.numTokens * dim) throw new Error(`x length ${x.length} != T*D = ${plan.numTokens * dim}`);
  const n = plan.permutation.length;
  const out = new Float32Array(n * dim);
  for (let r = 0; r < n; r++) {
    const t = plan.sortedTokens[r] as number;
    out.set(x.subarray(t * dim, (t + 1) * dim), r * dim);
  }
  return out;
}

/**
 * Combines expert outputs y [T*k, D] (in dispatch order) back to tokens:
 * out[t] = Σ_j weights[t, j] · y[inverse[t*k + j]], summed over the slots in order j = 0..k-1.
 */
export function combineRows(y: Float32Array, dim: number, weights: Float32Array, plan: DispatchPlan): Float32Array {
  const n = plan.permutation.length;
  if (y.length !== n * dim) throw new Error(`y length ${y.length} != T*k*D = ${n * dim}`);
  if (weights.length !== n) throw new Error(`weights length ${weights.length} != T*k = ${n}`);
  const T = plan.numTokens;
  const k = plan.k;
  const out = new Float32Array(T * dim);
  const acc = new Float64Array(dim);
  for (let t = 0; t < T; t++) {
    acc.fill(0);
    for (let j = 0; j < k; j++) {
      const w = weights[t * k + j] as number;
      const r = plan.inverse[t * k + j] as number;
      for (let d = 0; d < dim; d++) acc[d]! += w * (y[r * dim + d] as number);
    }
    out.set(acc, t * dim);
  }
  return out;
}
