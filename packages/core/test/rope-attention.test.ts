// ropeAttention (MLA's decoupled-RoPE causal attention as one op): against a float64 reference written
// out here (rotation, scores, causal softmax, weighted values), gradients by central differences, the
// f32 GEMM path against float64, and the composed form MLA uses on backends without the kernels.
import { describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { gradcheck, rand64, relErr } from './helpers.js';

const f32 = (t: T.Tensor): T.Tensor => T.noGrad(() => T.cast(t, 'f32'));
const vals = (t: T.Tensor): number[] => Array.from(t.dataSync());

interface Case {
  B: number;
  S: number;
  H: number;
  dn: number;
  dr: number;
  dv: number;
  /** cos/sin rows: 1 (shared positions) or B */
  rows: number;
  interleave: boolean;
}

/** Rotation angles of position p, pair i (any values serve; the op only reads cos/sin). */
function angles({ rows, S, dr }: Case): { cos: T.Tensor; sin: T.Tensor } {
  const th = Float64Array.from({ length: rows * S * (dr / 2) }, (_, n) => 0.37 * n + 0.11);
  const shape = [rows, S, dr / 2];
  return {
    cos: T.tensor(th.map(Math.cos), { shape, dtype: 'f64' }),
    sin: T.tensor(th.map(Math.sin), { shape, dtype: 'f64' }),
  };
}

/** The float64 reference: o [B, S, H, dv] written out loop by loop. */
function reference(c: Case, q: T.Tensor, kv: T.Tensor, kr: T.Tensor, cos: T.Tensor, sin: T.Tensor, scale: number) {
  const { B, S, H, dn, dr, dv, rows, interleave } = c;
  const [Q, KV, KR, C, Sn] = [q, kv, kr, cos, sin].map((t) => t.dataSync());
  const dq = dn + dr;
  const half = dr / 2;
  const rot = (x: ArrayLike<number>, at: number, b: number, s: number): number[] => {
    const out = new Array<number>(dr);
    for (let i = 0; i < half; i++) {
      const t = ((rows === 1 ? 0 : b) * S + s) * half + i;
      const [ia, io] = interleave ? [2 * i, 2 * i + 1] : [i, i + half];
      out[ia] = x[at + ia]! * C![t]! - x[at + io]! * Sn![t]!;
      out[io] = x[at + io]! * C![t]! + x[at + ia]! * Sn![t]!;
    }
    return out;
  };
  const o = new Float64Array(B * S * H * dv);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < S; i++) {
        const qi = Q!.slice(((b * S + i) * H + h) * dq, ((b * S + i) * H + h) * dq + dn);
        const qr = rot(Q!, ((b * S + i) * H + h) * dq + dn, b, i);
        const e = Array.from({ length: i + 1 }, (_, j) => {
          const kAt = ((b * S + j) * H + h) * (dn + dv);
          const kr_ = rot(KR!, (b * S + j) * dr, b, j);
          let s = 0;
          for (let x = 0; x < dn; x++) s += qi[x]! * KV![kAt + x]!;
          for (let x = 0; x < dr; x++) s += qr[x]! * kr_[x]!;
          return Math.exp(s * scale);
        });
        const z = e.reduce((a, w) => a + w, 0);
        for (let x = 0; x < dv; x++)
          o[((b * S + i) * H + h) * dv + x] = e.reduce(
            (a, w, j) => a + (w / z) * KV![((b * S + j) * H + h) * (dn + dv) + dn + x]!,
            0,
          );
      }
  return o;
}

/** MLA's composed form: split, rotate, concat, expand, causalAttention. */
function composed(c: Case, q: T.Tensor, kv: T.Tensor, kr: T.Tensor, cos: T.Tensor, sin: T.Tensor, scale: number) {
  const { B, S, H, dn, dr, dv, interleave } = c;
  const [qn, qr] = T.split(q, [dn, dr], -1) as [T.Tensor, T.Tensor];
  const [kn, v] = T.split(kv, [dn, dv], -1) as [T.Tensor, T.Tensor];
  const krot = T.rotaryEmbedding(T.reshape(kr, [B, S, 1, dr]), cos, sin, interleave);
  const k = T.concat([kn, T.expand(krot, [B, S, H, dr])], -1);
  return T.causalAttention(T.concat([qn, T.rotaryEmbedding(qr, cos, sin, interleave)], -1), k, v, scale);
}

const CASES: Case[] = [
  { B: 2, S: 5, H: 3, dn: 3, dr: 4, dv: 5, rows: 1, interleave: true },
  { B: 2, S: 7, H: 2, dn: 5, dr: 2, dv: 3, rows: 2, interleave: false },
  { B: 1, S: 16, H: 2, dn: 6, dr: 2, dv: 8, rows: 1, interleave: false }, // whole GEMM tiles
  { B: 3, S: 9, H: 1, dn: 2, dr: 6, dv: 4, rows: 3, interleave: true },
];

describe('ropeAttention', () => {
  it('equals the float64 reference and the composed form, differentiates, and f32 (GEMM) agrees', () => {
    CASES.forEach((c, n) => {
      const { B, S, H, dn, dr, dv, interleave } = c;
      const q = rand64([B, S, H, dn + dr], 10 + n, -2, 2);
      const kv = rand64([B, S, H, dn + dv], 20 + n, -2, 2);
      const kr = rand64([B, S, dr], 30 + n, -2, 2);
      const { cos, sin } = angles(c);
      const scale = 0.41;
      const op = (a: T.Tensor, b: T.Tensor, r: T.Tensor, cs = cos, sn = sin) =>
        T.ropeAttention(a, b, r, cs, sn, { scale, interleave });
      expect(relErr(vals(op(q, kv, kr)), reference(c, q, kv, kr, cos, sin, scale)), `case ${n}`).toBeLessThan(1e-13);
      gradcheck(`ropeAttention case ${n}`, (a, b, r) => op(a, b, r), [q, kv, kr]);
      // Gradients equal the composed form's (float64), and f32 stays within f32 rounding of float64.
      const g = rand64([B, S, H, dv], 40 + n);
      const run = (conv: (t: T.Tensor) => T.Tensor, form: 'fused' | 'composed') => {
        const xs = [q, kv, kr].map((t) => conv(t).detach().requireGrad());
        const [cs, sn] = [conv(cos), conv(sin)];
        const o =
          form === 'fused' ? op(xs[0]!, xs[1]!, xs[2]!, cs, sn) : composed(c, xs[0]!, xs[1]!, xs[2]!, cs, sn, scale);
        T.sum(T.mul(o, conv(g))).backward();
        return [o, ...xs.map((x) => x.grad!)].map(vals);
      };
      const r64 = run((t) => t, 'fused');
      const c64 = run((t) => t, 'composed');
      const r32 = run(f32, 'fused');
      r64.forEach((x, i) => expect(relErr(x, c64[i]!), `case ${n} composed ${i}`).toBeLessThan(1e-13));
      r64.forEach((x, i) => expect(relErr(r32[i]!, x), `case ${n} f32 ${i}`).toBeLessThan(2e-6));
    });
  });

  it('rejects mismatched shapes and dtypes with the expected layout', () => {
    const c = CASES[0]!;
    const { cos, sin } = angles(c);
    const q = rand64([2, 5, 3, 7], 1);
    const kv = rand64([2, 5, 3, 8], 2);
    const at = { scale: 1, interleave: true };
    expect(() => T.ropeAttention(q, kv, rand64([2, 5, 3], 3), cos, sin, at)).toThrow(
      /ropeAttention: expected q \[B, S, H, dn\+dr\]/,
    );
    expect(() => T.ropeAttention(q, rand64([2, 4, 3, 8], 2), rand64([2, 5, 4], 3), cos, sin, at)).toThrow(
      /got q \[2, 5, 3, 7\], kv \[2, 4, 3, 8\]/,
    );
    expect(() => T.ropeAttention(f32(q), kv, rand64([2, 5, 4], 3), cos, sin, at)).toThrow(/dtypes differ/);
  });
});
