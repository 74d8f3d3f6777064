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
