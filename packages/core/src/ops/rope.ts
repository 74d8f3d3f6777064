// Rotary position embedding as one fused op (for backends with a 'rope' kernel; @dsv3/mla composes
// it from elementwise ops elsewhere). The gradient is the inverse rotation.
import { record } from '../autograd.js';
import { fmt, ShapeError } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { exec1, requireFloat } from './exec.js';

/**
 * Rotates the last axis of x [B, S, H, d] by cos/sin [Bc, S, d/2] (Bc = B or 1, no gradient):
 * pairs (x_2i, x_2i+1) when `interleave`, else (x_i, x_i+d/2). Needs the backend's 'rope' kernel.
 */
export function rotaryEmbedding(x: Tensor, cos: Tensor, sin: Tensor, interleave: boolean): Tensor {
  requireFloat('rotaryEmbedding', x, cos, sin);
  const [B, S, , d] = x.shape as [number, number, number, number];
  const ok =
    x.ndim === 4 &&
    d % 2 === 0 &&
    cos.ndim === 3 &&
    (cos.shape[0] === B || cos.shape[0] === 1) &&
    cos.shape[1] === S &&
    cos.shape[2] === d / 2 &&
    sin.shape.every((v, i) => v === cos.shape[i]);
  if (!ok)
    throw new ShapeError(
      `rotaryEmbedding: x must be [B, S, H, even d] and cos/sin [B or 1, S, d/2]; got ${fmt(x.shape)}, ${fmt(cos.shape)}, ${fmt(sin.shape)}`,
    );
  if (cos.requiresGrad || sin.requiresGrad) throw new Error('rotaryEmbedding: cos/sin take no gradient');
  if (x.dtype !== cos.dtype || x.dtype !== sin.dtype)
    throw new TypeError(`rotaryEmbedding: dtypes differ (x ${x.dtype}, cos ${cos.dtype}, sin ${sin.dtype})`);
  const y = exec1('rope', [x, cos, sin], { interleave, inverse: false });
  return record(y, 'rotaryEmbedding', [x], (g) => [exec1('rope', [g, cos, sin], { interleave, inverse: true })]);
}
