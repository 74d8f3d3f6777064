// Causal self-attention as one op: o = softmax(scale·q·kᵀ + causal mask) · v per head, inputs and
// output in the [B, S, H, d] layout of the projections. Fused (forward and backward) where the
// backend has the kernels, composed from matmul and causalSoftmax elsewhere.
import { record } from '../autograd.js';
import { hasKernel } from '../backend.js';
import { fmt, ShapeError } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { exec, requireFloat } from './exec.js';
import { matmul } from './linalg.js';
import { causalSoftmax } from './nn.js';
import { permute } from './shape-ops.js';

/** q, k [B, S, H, dq] and v [B, S, H, dv] → o [B, S, H, dv]; query i attends to keys j ≤ i. */
export function causalAttention(q: Tensor, k: Tensor, v: Tensor, scale: number): Tensor {
  requireFloat('causalAttention', q, k, v);
  const [B, S, H, dq] = q.shape;
  const ok =
    q.ndim === 4 &&
    k.ndim === 4 &&
    v.ndim === 4 &&
    k.shape.every((d, i) => d === q.shape[i]) &&
    v.shape[0] === B &&
    v.shape[1] === S &&
    v.shape[2] === H &&
    dq! > 0;
  if (!ok)
    throw new ShapeError(
      `causalAttention: q and k must be [B, S, H, d] of one shape and v [B, S, H, dv]; got ${fmt(q.shape)}, ${fmt(k.shape)}, ${fmt(v.shape)}`,
    );
  if (k.dtype !== q.dtype || v.dtype !== q.dtype)
    throw new TypeError(`causalAttention: dtypes differ (q ${q.dtype}, k ${k.dtype}, v ${v.dtype})`);
  const be = q.backend.name;
  const fused =
    (q.dtype === 'f32' || q.dtype === 'f64') &&
    hasKernel('causalAttention', be) &&
    hasKernel('causalAttentionBackward', be);
  if (!fused) {
    const heads = (t: Tensor) => permute(t, [0, 2, 1, 3]);
    const p = causalSoftmax(matmul(heads(q), heads(k), { transB: true }), scale);
    return permute(matmul(p, heads(v)), [0, 2, 1, 3]);
  }
  const [o, lse] = exec('causalAttention', [q, k, v], { scale }) as [Tensor, Tensor];
  return record(o, 'causalAttention', [q, k, v], (g) =>
    exec('causalAttentionBackward', [q, k, v, o, lse, g], { scale }),
  );
}

/**
 * Causal attention in DeepSeek's decoupled-RoPE layout (MLA's training form), one op:
 * q [B, S, H, dn+dr] (its last dr columns rotated by cos/sin here), kv [B, S, H, dn+dv] (each head's
 * key part, then its value) and kr [B, S, dr] (one rotary key shared by every head, rotated here);
 * cos/sin [B or 1, S, dr/2] take no gradient. Each head attends with key [kv's first dn columns;
 * R·kr] and value kv's last dv columns → o [B, S, H, dv]. Rotation pairs as in rotaryEmbedding.
 * Needs the backend's 'ropeAttention' kernels (see hasFusedKernel); MLA composes it elsewhere.
 */
export function ropeAttention(
  q: Tensor,
  kv: Tensor,
  kr: Tensor,
  cos: Tensor,
  sin: Tensor,
  { scale, interleave }: { scale: number; interleave: boolean },
): Tensor {
  requireFloat('ropeAttention', q, kv, kr, cos, sin);
  const [B, S, H, dq] = q.shape as [number, number, number, number];
  const dr = kr.shape[2]!;
  const ok =
    q.ndim === 4 &&
    kv.ndim === 4 &&
    kr.ndim === 3 &&
    kv.shape[0] === B &&
    kv.shape[1] === S &&
    kv.shape[2] === H &&
    kr.shape[0] === B &&
    kr.shape[1] === S &&
    dr % 2 === 0 &&
    dr > 0 &&
    dq > dr &&
    kv.shape[3]! > dq - dr &&
    cos.ndim === 3 &&
    (cos.shape[0] === B || cos.shape[0] === 1) &&
    cos.shape[1] === S &&
    cos.shape[2] === dr / 2 &&
    sin.shape.every((v, i) => v === cos.shape[i]);
  if (!ok)
    throw new ShapeError(
      `ropeAttention: expected q [B, S, H, dn+dr], kv [B, S, H, dn+dv], kr [B, S, dr] (dr even, dn, dv > 0) and cos/sin [B or 1, S, dr/2]; got q ${fmt(q.shape)}, kv ${fmt(kv.shape)}, kr ${fmt(kr.shape)}, cos ${fmt(cos.shape)}, sin ${fmt(sin.shape)}`,
    );
  if ([kv, kr, cos, sin].some((t) => t.dtype !== q.dtype))
    throw new TypeError(
      `ropeAttention: dtypes differ (q ${q.dtype}, kv ${kv.dtype}, kr ${kr.dtype}, cos ${cos.dtype}, sin ${sin.dtype})`,
    );
  if (cos.requiresGrad || sin.requiresGrad) throw new Error('ropeAttention: cos/sin take no gradient');
  const be = q.backend.name;
  if (!hasKernel('ropeAttention', be) || !hasKernel('ropeAttentionBackward', be))
    throw new Error(`ropeAttention: the ${be} backend has no ropeAttention kernels (compose it from causalAttention)`);
  const attrs = { scale, interleave };
  const [o, lse] = exec('ropeAttention', [q, kv, kr, cos, sin], attrs) as [Tensor, Tensor];
  return record(o, 'ropeAttention', [q, kv, kr], (g) =>
    exec('ropeAttentionBackward', [q, kv, kr, cos, sin, o, lse, g], attrs),
  );
}
