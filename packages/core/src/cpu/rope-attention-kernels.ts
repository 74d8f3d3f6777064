// Causal attention in DeepSeek's decoupled-RoPE layout (MLA's training form), fused on the CPU: the
// operands come straight from the projections' outputs — queries [B,S,H,dn+dr] whose last dr columns
// are rotated here, keys' per-head part and values packed as [B,S,H,dn+dv], one rotary key [B,S,dr]
// shared by every head and rotated here — so no split, concat, expand or separate rotation runs (nor
// their backward copies). Rotated queries and assembled keys are built in one memory-order pass each;
// values are read in place inside kv. The products and softmax are attention-kernels.ts's.
//   ropeAttention          [q, kv, kr, cos, sin] → [o, lse]                   o [B,S,H,dv], lse [B,H,S]
//   ropeAttentionBackward  [q, kv, kr, cos, sin, o, lse, dO] → [dq, dkv, dkr]
import type { Backend, KernelTensor } from '../backend.js';
import { attendBackward, attendForward, buf, type F, floats, type HeadLayout, staged } from './attention-kernels.js';
import { raw, wrap } from './backend.js';

interface RopeAttrs {
  scale: number;
  interleave: boolean;
}

/**
 * Rotates one row's rotary part: dst[dstAt + ·] = R(±θ) src[srcAt + ·] over half pairs, pairs
 * (2i, 2i+1) when interleaved, else (i, i + half) — the same arithmetic as core's 'rope' kernel.
 */
function rotate(
  src: F,
  srcAt: number,
  dst: F,
  dstAt: number,
  c: F,
  s: F,
  t: number,
  half: number,
  il: boolean,
  sign: number,
) {
  const [step, other] = il ? [2, 1] : [1, half];
  for (let i = 0; i < half; i++) {
    const cs = c[t + i]!;
    const sn = sign * s[t + i]!;
    const a = src[srcAt + i * step]!;
    const o = src[srcAt + i * step + other]!;
    dst[dstAt + i * step] = a * cs - o * sn;
    dst[dstAt + i * step + other] = o * cs + a * sn;
  }
}

function ropeLayout(ts: KernelTensor[], il: boolean, grads: F[] = []): HeadLayout {
  const [q, kv, kr, cos] = ts;
  const [B, S, H, dq] = q!.shape as [number, number, number, number];
  const dr = kr!.shape[2]!;
  const dn = dq - dr;
  const wkv = kv!.shape[3]!;
  const dv = wkv - dn;
  const half = dr / 2;
  const wide = q!.dtype === 'f64';
  const [Q, KV, KR, C, Sn] = ts.slice(0, 5).map((t) => raw(t!)) as F[];
  const [dQ, dKV, dKR] = grads;
  const perB = cos!.shape[0] === 1 ? 0 : S * half;
  return {
    B,
    S,
    H,
    dq,
    dv,
    wide,
    // Queries with their rotary part rotated, keys with the shared rotated key appended to each head's
    // part (both [B, S, H, dq], built in memory order); values read in place from a copy of kv.
    operands() {
      const qs = buf(wide, 'q', B * S * H * dq);
      const ks = buf(wide, 'k', B * S * H * dq);
      const kRot = buf(wide, 'kr', dr);
      for (let b = 0; b < B; b++)
        for (let s = 0; s < S; s++) {
          const t = b * perB + s * half;
          rotate(KR!, (b * S + s) * dr, kRot, 0, C!, Sn!, t, half, il, 1);
          for (let h = 0; h < H; h++) {
            const at = ((b * S + s) * H + h) * dq;
            for (let j = 0; j < dn; j++) qs[at + j] = Q![at + j]!;
            rotate(Q!, at + dn, qs, at + dn, C!, Sn!, t, half, il, 1);
            const kvAt = ((b * S + s) * H + h) * wkv;
            for (let j = 0; j < dn; j++) ks[at + j] = KV![kvAt + j]!;
            for (let j = 0; j < dr; j++) ks[at + dn + j] = kRot[j]!;
          }
        }
      return { q: { x: qs, w: dq, c: 0 }, k: { x: ks, w: dq, c: 0 }, v: { x: staged(wide, 'kv', KV!), w: wkv, c: dn } };
    },
    // dq's rotary part rotated back; dk's own part and dv packed into dkv; dk's rotary parts summed over
    // the heads (in head order) and rotated back into dkr.
    storeGrads(gq, gk, gv) {
      const kGrad = buf(wide, 'dkr', dr);
      for (let b = 0; b < B; b++)
        for (let s = 0; s < S; s++) {
          const t = b * perB + s * half;
          for (let h = 0; h < H; h++) {
            const at = ((b * S + s) * H + h) * dq;
            for (let j = 0; j < dn; j++) dQ![at + j] = gq[at + j]!;
            rotate(gq, at + dn, dQ!, at + dn, C!, Sn!, t, half, il, -1);
            const kvAt = ((b * S + s) * H + h) * wkv;
            const vAt = ((b * S + s) * H + h) * dv;
            for (let j = 0; j < dn; j++) dKV![kvAt + j] = gk[at + j]!;
            for (let j = 0; j < dv; j++) dKV![kvAt + dn + j] = gv[vAt + j]!;
            if (h === 0) for (let j = 0; j < dr; j++) kGrad[j] = gk[at + dn + j]!;
            else for (let j = 0; j < dr; j++) kGrad[j] = kGrad[j]! + gk[at + dn + j]!;
          }
          rotate(kGrad, 0, dKR!, (b * S + s) * dr, C!, Sn!, t, half, il, -1);
        }
    },
  };
}

export function ropeAttentionKernel(_b: Backend, ts: KernelTensor[], { scale, interleave }: RopeAttrs): KernelTensor[] {
  const L = ropeLayout(ts, interleave);
  const { o, lse } = attendForward(L, scale);
  const dt = ts[0]!.dtype;
  return [wrap(dt, [L.B, L.S, L.H, L.dv], o), wrap(dt, [L.B, L.H, L.S], lse)];
}

export function ropeAttentionBackwardKernel(
  _b: Backend,
  ts: KernelTensor[],
  { scale, interleave }: RopeAttrs,
): KernelTensor[] {
  const [q, kv, kr, , , o, lse, dO] = ts;
  const wide = q!.dtype === 'f64';
  const grads = [q, kv, kr].map((t) => floats(wide, raw(t!).length));
  attendBackward(ropeLayout(ts, interleave, grads), raw(o!) as F, raw(lse!) as F, raw(dO!) as F, scale);
  return [q, kv, kr].map((t, i) => wrap(t!.dtype, t!.shape, grads[i]!));
}
