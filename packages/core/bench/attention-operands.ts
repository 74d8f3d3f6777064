// The attention benches' operands: ropeAttention's inputs at the tiny preset's layer shape (4 heads,
// nope 32 / rope 16 / v 32), random normal from one seeded stream.
import { wrap } from '../src/cpu/backend.js';
import { Rng } from '../src/index.js';

export const [H, dn, dr, dv] = [4, 32, 16, 32];

/**
 * [q, k, k shared, cos, sin] and dO for B x S tokens, ropeAttention's attributes, and `random` (the same
 * stream, for further operands drawn after these).
 */
export function ropeAttentionOperands(B: number, S: number) {
  const rng = new Rng(1);
  const random = (shape: number[]) =>
    wrap(
      'f32',
      shape,
      Float32Array.from({ length: shape.reduce((a, b) => a * b) }, () => rng.normal()),
    );
  const ins = [
    random([B, S, H, dn + dr]),
    random([B, S, H, dn + dv]),
    random([B, S, dr]),
    random([1, S, dr / 2]),
    random([1, S, dr / 2]),
  ];
  const dO = random([B, S, H, dv]);
  return { ins, dO, attrs: { scale: 0.1, interleave: false }, random };
}
