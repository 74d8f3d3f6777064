// The complementary sequence-wise balance loss of DeepSeek-V3 as a differentiable Tensor op, built
// from core ops (so it runs on any backend without reading anything back):
//   f_i = N_r/(K_r·T) Σ_t 1[i ∈ topk(t)]   (a constant: it comes from the top-k)
//   P_i = (1/T) Σ_t s_{i,t} / Σ_j s_{j,t}
//   L   = α Σ_i f_i P_i, per sequence of `seqLen` tokens, averaged over the sequences.
// Same definition as the typed-array `sequenceBalanceLoss` (which also gives dL/ds in closed form).
import { div, full, mean, mul, reshape, scatterAlong, sum, tensor, type Tensor } from '@dsv3/core';

export interface SeqBalanceLossTOptions {
  /** α (V3: 0.0001). */
  alpha: number;
  /** Tokens per sequence (rows are consecutive sequences); default: all rows are one sequence. */
  seqLen?: number | undefined;
}

/**
 * L as a scalar Tensor, differentiable w.r.t. `scores` [T, E] (the gate's sigmoid outputs, without the
 * bias). `indices` [T, k] are the chosen experts: a host array (checked) or an i32 Tensor on the same
 * backend.
 */
export function sequenceBalanceLossT(
  scores: Tensor,
  indices: Tensor | ArrayLike<number>,
  opts: SeqBalanceLossTOptions,
): Tensor {
  if (scores.ndim !== 2)
    throw new Error(`sequenceBalanceLossT: scores must be [T, E], got [${scores.shape.join(', ')}]`);
  const [T, E] = scores.shape as [number, number];
  if (T === 0) throw new Error('sequenceBalanceLossT needs at least one token');
  if (!Number.isFinite(opts.alpha)) throw new Error(`sequenceBalanceLossT: alpha must be finite, got ${opts.alpha}`);
  let idx: Tensor;
  if (isTensor(indices)) {
    if (indices.dtype !== 'i32' || indices.ndim !== 2 || indices.shape[0] !== T) {
      throw new Error(
        `sequenceBalanceLossT: indices must be an i32 [${T}, k] tensor, got ${indices.dtype} [${indices.shape.join(', ')}]`,
      );
    }
    idx = indices;
  } else {
    if (indices.length % T !== 0 || indices.length === 0)
      throw new Error(`sequenceBalanceLossT: ${indices.length} indices is not T*k for T = ${T}`);
    const host = Int32Array.from(indices);
    for (let i = 0; i < host.length; i++) {
      if (!(host[i]! >= 0 && host[i]! < E) || host[i] !== indices[i])
        throw new Error(`sequenceBalanceLossT: expert index ${indices[i]} at position ${i} is outside [0, ${E})`);
    }
    idx = tensor(host, { shape: [T, host.length / T], dtype: 'i32', backend: scores.backend });
  }
  const k = idx.shape[1]!;
  const L = opts.seqLen ?? T;
  if (!Number.isInteger(L) || L < 1 || T % L !== 0)
    throw new Error(`sequenceBalanceLossT: seqLen=${L} must be a positive integer dividing the number of tokens ${T}`);
  const B = T / L;
  const opt = { dtype: scores.dtype, backend: scores.backend };
  // f [B, E]: routed pairs per expert per sequence, scaled by N_r/(K_r·T_seq); no gradient.
  const hits = scatterAlong(full([T, E], 0, opt), idx, full([T, k], 1, opt), -1);
  const f = mul(sum(reshape(hits, [B, L, E]), 1), E / (k * L));
  // P [B, E]: mean over the sequence of the row-normalized scores.
  const P = mean(reshape(div(scores, sum(scores, -1, true)), [B, L, E]), 1);
  return mul(sum(mul(f, P)), opts.alpha / B);
}

function isTensor(x: unknown): x is Tensor {
  return typeof x === 'object' && x !== null && 'shape' in x && 'dtype' in x && 'backend' in x;
}
