// The fused attention kernels run their (batch, head) pairs as one batched GEMM call per product
// (pairs per call bounded by setAttentionScoreBudget): every head's products are the same sums
// in the same order whatever the grouping, so outputs and gradients are bitwise those of one call per
// head — checked here for groups of 1 (one call per head), 2, 3 (ragged groups, groups across batch
// rows) and all B·H, in f32
// (the GEMM, threaded where a group's work passes the threading threshold) and f64.
import { afterEach, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { rand64 } from './helpers.js';

afterEach(() => T.setAttentionScoreBudget());

interface Shape {
  B: number;
  S: number;
  H: number;
  dn: number;
  dr: number;
  dv: number;
}

// S > 4 throughout: with one head per call and S <= gemmConfig.gemvMaxM, the q·kᵀ and dO·vᵀ products
// (B transposed, batch 1) take the GEMV kernel, whose sums are split differently from the GEMM's.
const SHAPES: Shape[] = [
  { B: 2, S: 5, H: 3, dn: 3, dr: 4, dv: 5 },
  { B: 1, S: 9, H: 2, dn: 5, dr: 2, dv: 3 },
  { B: 2, S: 70, H: 5, dn: 24, dr: 8, dv: 20 }, // per head under the threading threshold, a group over it
  { B: 1, S: 128, H: 4, dn: 32, dr: 16, dv: 32 }, // the tiny preset's layer
];

/** Output and input gradients of ropeAttention and causalAttention with `group` heads per GEMM call. */
function run(s: Shape, dtype: 'f32' | 'f64', group: number, seed: number): Float32Array[] | Float64Array[] {
  T.setAttentionScoreBudget(group * s.S * s.S);
  const { B, S, H, dn, dr, dv } = s;
  const conv = (t: T.Tensor) => T.noGrad(() => T.cast(t, dtype)).detach();
  const q = conv(rand64([B, S, H, dn + dr], seed, -2, 2)).requireGrad();
  const kv = conv(rand64([B, S, H, dn + dv], seed + 1, -2, 2)).requireGrad();
  const kr = conv(rand64([B, S, dr], seed + 2, -2, 2)).requireGrad();
  const th = Float64Array.from({ length: S * (dr / 2) }, (_, n) => 0.37 * n + 0.11);
  const cos = conv(T.tensor(th.map(Math.cos), { shape: [1, S, dr / 2], dtype: 'f64' }));
  const sin = conv(T.tensor(th.map(Math.sin), { shape: [1, S, dr / 2], dtype: 'f64' }));
  const g = conv(rand64([B, S, H, dv], seed + 3));
  const o = T.ropeAttention(q, kv, kr, cos, sin, { scale: 0.3, interleave: false });
  T.sum(T.mul(o, g)).backward();
  // The plain layout: q [B,S,H,dq], k [B,S,H,dq], v [B,S,H,dv].
  const pq = conv(rand64([B, S, H, dn + dr], seed + 4, -2, 2)).requireGrad();
  const pk = conv(rand64([B, S, H, dn + dr], seed + 5, -2, 2)).requireGrad();
  const pv = conv(rand64([B, S, H, dv], seed + 6, -2, 2)).requireGrad();
  const po = T.causalAttention(pq, pk, pv, 0.3);
  T.sum(T.mul(po, g)).backward();
  return [o, q.grad!, kv.grad!, kr.grad!, po, pq.grad!, pk.grad!, pv.grad!].map((t) => t.dataSync()) as
    | Float32Array[]
    | Float64Array[];
}

describe('attention heads batched per GEMM call', () => {
  for (const dtype of ['f32', 'f64'] as const)
    it(`gives bitwise the per-head results (${dtype})`, () => {
      SHAPES.forEach((s, n) => {
        const perHead = run(s, dtype, 1, 50 + 10 * n);
        for (const group of [2, 3, s.B * s.H]) {
          const grouped = run(s, dtype, group, 50 + 10 * n);
          grouped.forEach((x, i) => {
            expect(x.length, `shape ${n} group ${group} output ${i}`).toBe(perHead[i]!.length);
            const differs = x.findIndex((v, j) => !Object.is(v, perHead[i]![j]));
            expect(differs, `shape ${n} group ${group} output ${i}: first differing element`).toBe(-1);
          });
        }
      });
    });

  it('rejects a budget that is not a positive integer', () => {
    expect(() => T.setAttentionScoreBudget(0)).toThrow(/expected a positive integer number of floats, got 0/);
    expect(() => T.setAttentionScoreBudget(2.5)).toThrow(/got 2.5/);
  });
});
