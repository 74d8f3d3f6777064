// Causal attention in DeepSeek's decoupled-RoPE layout (MLA's training form), fused on the CPU: the
// operands are read per head straight from the projections' outputs — queries [B,S,H,dn+dr] whose
// last dr columns are rotated here, keys' per-head part and values packed as [B,S,H,dn+dv], one rotary
// key [B,S,dr] shared by every head and rotated here — so no split, concat, expand or separate
// rotation runs (nor their backward copies). The products and softmax are attention-kernels.ts's.
//   ropeAttention          [q, kv, kr, cos, sin] → [o, lse]                   o [B,S,H,dv], lse [B,H,S]
//   ropeAttentionBackward  [q, kv, kr, cos, sin, o, lse, dO] → [dq, dkv, dkr]
import type { Backend, KernelTensor } from '../backend.js';
import {
  attendBackward,
  attendForward,
  buf,
  type F,
  floats,
  type HeadLayout,
  scorePairs,
} from './attention-kernels.js';
import { raw, wrap } from './backend.js';
import {
  type TrainingAttentionArgs,
  trainingAttentionBackward,
  trainingAttentionForward,
  trainingAttentionRuns,
} from './gemm/training-attention.js';
import { takeF32 } from './pool.js';

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
  // Batch row b's rotated shared key [S, dr], built once for its H heads; its gradient summed over them.
  const kRot = buf(wide, 'kr', S * dr);
  const kGrad = buf(wide, 'dkr', S * dr);
  let rotatedFor = -1;
  return {
    B,
    S,
    H,
    dq,
    dv,
    wide,
    loadQ(b, h, dst, to) {
      for (let s = 0; s < S; s++) {
        const at = ((b * S + s) * H + h) * dq;
        for (let j = 0; j < dn; j++) dst[to + s * dq + j] = Q![at + j]!;
        rotate(Q!, at + dn, dst, to + s * dq + dn, C!, Sn!, b * perB + s * half, half, il, 1);
      }
    },
    loadK(b, h, dst, to) {
      if (rotatedFor !== b) {
        for (let s = 0; s < S; s++)
          rotate(KR!, (b * S + s) * dr, kRot, s * dr, C!, Sn!, b * perB + s * half, half, il, 1);
        rotatedFor = b;
      }
      for (let s = 0; s < S; s++) {
        const at = ((b * S + s) * H + h) * wkv;
        for (let j = 0; j < dn; j++) dst[to + s * dq + j] = KV![at + j]!;
        for (let j = 0; j < dr; j++) dst[to + s * dq + dn + j] = kRot[s * dr + j]!;
      }
    },
    loadV(b, h, dst, to) {
      for (let s = 0; s < S; s++) {
        const at = ((b * S + s) * H + h) * wkv + dn;
        for (let j = 0; j < dv; j++) dst[to + s * dv + j] = KV![at + j]!;
      }
    },
    storeQ(b, h, src, from) {
      for (let s = 0; s < S; s++) {
        const at = ((b * S + s) * H + h) * dq;
        for (let j = 0; j < dn; j++) dQ![at + j] = src[from + s * dq + j]!;
        rotate(src, from + s * dq + dn, dQ!, at + dn, C!, Sn!, b * perB + s * half, half, il, -1);
      }
    },
    storeK(b, h, src, from) {
      for (let s = 0; s < S; s++) {
        const at = ((b * S + s) * H + h) * wkv;
        for (let j = 0; j < dn; j++) dKV![at + j] = src[from + s * dq + j]!;
        if (h === 0) for (let j = 0; j < dr; j++) kGrad[s * dr + j] = src[from + s * dq + dn + j]!;
        else for (let j = 0; j < dr; j++) kGrad[s * dr + j] = kGrad[s * dr + j]! + src[from + s * dq + dn + j]!;
      }
      // The last head's share is in: rotate the summed gradient back into dkr's batch row.
      if (h === H - 1)
        for (let s = 0; s < S; s++)
          rotate(kGrad, s * dr, dKR!, (b * S + s) * dr, C!, Sn!, b * perB + s * half, half, il, -1);
    },
    storeV(b, h, src, from) {
      for (let s = 0; s < S; s++) {
        const at = ((b * S + s) * H + h) * wkv + dn;
        for (let j = 0; j < dv; j++) dKV![at + j] = src[from + s * dv + j]!;
      }
    },
  };
}

/**
 * The f32 operands as the GEMM engine's attention job reads them: the queries and the shared rotary key
 * [B, S, dr] (their rotary parts rotated by the job, with rotate's arithmetic), the keys' per-head part and
 * the values inside kv — ropeLayout's loads, with the same rotations.
 */
function ropeJobArgs(ts: KernelTensor[], il: boolean, scale: number): TrainingAttentionArgs {
  const [q, kv, kr, cos] = ts;
  const [B, S, H, dq] = q!.shape as [number, number, number, number];
  const dr = kr!.shape[2]!;
  const dn = dq - dr;
  const wkv = kv!.shape[3]!;
  // raw() read one by one, not through map(): map()'s array changes elements kind once inlined (a
  // one-time deopt in a request's prefill, eighteenth session)
  const [Q, KV, KR, C, Sn] = [raw(ts[0]!), raw(ts[1]!), raw(ts[2]!), raw(ts[3]!), raw(ts[4]!)] as Float32Array[];
  return {
    B,
    S,
    H,
    dq,
    dv: wkv - dn,
    scale,
    q: { data: Q!, layout: 'heads', width: dq, offset: 0 },
    k: { data: KV!, layout: 'heads', width: wkv, offset: 0 },
    kShared: { data: KR!, layout: 'shared', width: dr, offset: 0 },
    rotateShared: true,
    v: { data: KV!, layout: 'heads', width: wkv, offset: dn },
    maxPairs: scorePairs(S),
    rotary: { cos: C!, sin: Sn!, rows: cos!.shape[0]!, width: dr, interleave: il },
  };
}

export function ropeAttentionKernel(_b: Backend, ts: KernelTensor[], { scale, interleave }: RopeAttrs): KernelTensor[] {
  const dt = ts[0]!.dtype;
  if (dt === 'f32' && trainingAttentionRuns()) {
    const a = ropeJobArgs(ts, interleave, scale);
    const [o, lse] = [takeF32(a.B * a.S * a.H * a.dv), takeF32(a.B * a.H * a.S)];
    trainingAttentionForward(a, o, lse);
    return [wrap(dt, [a.B, a.S, a.H, a.dv], o), wrap(dt, [a.B, a.H, a.S], lse)];
  }
  const L = ropeLayout(ts, interleave);
  const { o, lse } = attendForward(L, scale);
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
  if (!wide && trainingAttentionRuns()) ropeJobBackward(ts, interleave, scale, grads as Float32Array[]);
  else attendBackward(ropeLayout(ts, interleave, grads), raw(o!) as F, raw(lse!) as F, raw(dO!) as F, scale);
  return [q, kv, kr].map((t, i) => wrap(t!.dtype, t!.shape, grads[i]!));
}

/**
 * The f32 backward on the engine's job (which rotates dq's rotary part back), then the rotary key's
 * gradient summed over the heads in head order and rotated back — ropeLayout's storeK, in the same order.
 */
function ropeJobBackward(ts: KernelTensor[], il: boolean, scale: number, [dQ, dKV, dKR]: Float32Array[]): void {
  const a = ropeJobArgs(ts, il, scale);
  const { B, S, H, dq } = a;
  const [O, LSE, DO] = ts.slice(5, 8).map((t) => raw(t!)) as Float32Array[];
  const dr = a.kShared!.width;
  const half = dr / 2;
  const wkv = a.k.width;
  const perHead = buf(false, 'dkrHeads', B * H * S * dr) as Float32Array;
  trainingAttentionBackward(a, O!, LSE!, DO!, {
    dq: { data: dQ!, layout: 'heads', width: dq, offset: 0 },
    dk: { data: dKV!, layout: 'heads', width: wkv, offset: 0 },
    dkShared: { data: perHead, layout: 'headMajor', width: dr, offset: 0 },
    dv: { data: dKV!, layout: 'heads', width: wkv, offset: dq - dr },
  });
  const [C, Sn] = [raw(ts[3]!), raw(ts[4]!)] as Float32Array[];
  const perB = ts[3]!.shape[0] === 1 ? 0 : S * half;
  const kGrad = buf(false, 'dkr', S * dr);
  for (let b = 0; b < B; b++) {
    kGrad.set(perHead.subarray(b * H * S * dr, (b * H + 1) * S * dr));
    for (let h = 1; h < H; h++) {
      const from = (b * H + h) * S * dr;
      for (let j = 0; j < S * dr; j++) kGrad[j] = kGrad[j]! + perHead[from + j]!;
    }
    for (let s = 0; s < S; s++)
      rotate(kGrad, s * dr, dKR!, (b * S + s) * dr, C!, Sn!, b * perB + s * half, half, il, -1);
  }
}
