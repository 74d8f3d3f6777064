// Fused causal attention on the CPU, forward and backward, for training. Inputs stay in the
// [B, S, H, d] layout the projections produce (no permuted copies); each (batch, head) is gathered
// into reused scratch, its products run on the GEMM (f32; a plain loop for f64, which gradient
// checks use), and the S x S probabilities live only in scratch: the backward recomputes them from
// the saved row log-sum-exps instead of keeping B·H·S² values per layer.
//   causalAttention          [q, k, v] → [o, lse]          o [B,S,H,dv], lse [B,H,S]
//   causalAttentionBackward  [q, k, v, o, lse, dO] → [dq, dk, dv]
import type { Backend, KernelTensor } from '../backend.js';
import { raw, wrap } from './backend.js';
import { allocResident, freeResident, isResident, sgemm } from './gemm/index.js';
import { takeF32 } from './pool.js';

type F = Float32Array | Float64Array;

// Scratch reused across calls (grown on demand), one set per float width. The f32 set lives in the
// GEMM engine's memory where it can, so the products read their operands and write their results
// in place instead of copying them in and out of WebAssembly memory per head.
const scratch = { f32: new Map<string, Float32Array>(), f64: new Map<string, Float64Array>() };
function buf(wide: boolean, name: string, n: number): F {
  if (wide) {
    let a = scratch.f64.get(name);
    if (!a || a.length < n) scratch.f64.set(name, (a = new Float64Array(n)));
    return a;
  }
  let a = scratch.f32.get(name);
  if (!a || a.length < n) {
    if (a && isResident(a)) freeResident(a);
    a = (allocResident('f32', n) as Float32Array | null) ?? new Float32Array(n);
    scratch.f32.set(name, a);
  }
  return a;
}

/** C[m,n] = op(A) · op(B) with op(A) [m,k], op(B) [k,n] (A stored [k,m] when transA, B [n,k] when transB). */
function mm(m: number, n: number, k: number, A: F, transA: boolean, B: F, transB: boolean, C: F): void {
  if (A instanceof Float32Array) {
    sgemm({ m, n, k, a: A, transA, b: B as Float32Array, transB, c: C as Float32Array });
    return;
  }
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += A[transA ? p * m + i : i * k + p]! * B[transB ? j * k + p : p * n + j]!;
      C[i * n + j] = s;
    }
}

/** Copies head h of batch b of x [B, S, H, d] into dst [S, d]. */
function gatherHead(x: F, dst: F, b: number, h: number, S: number, H: number, d: number): void {
  let at = (b * S * H + h) * d;
  const step = H * d;
  for (let s = 0, o = 0; s < S; s++, at += step, o += d) for (let j = 0; j < d; j++) dst[o + j] = x[at + j]!;
}

/** Writes src [S, d] into head h of batch b of x [B, S, H, d]. */
function scatterHead(x: F, src: F, b: number, h: number, S: number, H: number, d: number): void {
  let at = (b * S * H + h) * d;
  const step = H * d;
  for (let s = 0, o = 0; s < S; s++, at += step, o += d) for (let j = 0; j < d; j++) x[at + j] = src[o + j]!;
}

interface Dims {
  B: number;
  S: number;
  H: number;
  dq: number;
  dv: number;
  wide: boolean;
}
const dimsOf = (q: KernelTensor, v: KernelTensor): Dims => {
  const [B, S, H, dq] = q.shape as [number, number, number, number];
  return { B, S, H, dq, dv: v.shape[3]!, wide: q.dtype === 'f64' };
};
const floats = (wide: boolean, n: number): F => (wide ? new Float64Array(n) : takeF32(n));

/** Scores of one head into `sc` [S, S]: scale·q·kᵀ, then the causal softmax in place (masked entries 0). */
function probabilities(sc: F, S: number, scale: number, lse: F | null, lseAt: number, saved: F | null): void {
  for (let i = 0; i < S; i++) {
    const r = i * S;
    let m: number;
    let l: number;
    if (saved) {
      l = saved[lseAt + i]!;
      for (let j = 0; j <= i; j++) sc[r + j] = Math.exp(sc[r + j]! * scale - l);
    } else {
      m = -Infinity;
      for (let j = 0; j <= i; j++) m = Math.max(m, sc[r + j]! * scale);
      let z = 0;
      for (let j = 0; j <= i; j++) {
        const e = Math.exp(sc[r + j]! * scale - m);
        sc[r + j] = e;
        z += e;
      }
      const inv = 1 / z;
      for (let j = 0; j <= i; j++) sc[r + j] = sc[r + j]! * inv;
      lse![lseAt + i] = m + Math.log(z);
    }
    sc.fill(0, r + i + 1, r + S);
  }
}

export function causalAttentionKernel(
  _b: Backend,
  [q, k, v]: KernelTensor[],
  { scale }: { scale: number },
): KernelTensor[] {
  const { B, S, H, dq, dv, wide } = dimsOf(q!, v!);
  const [Q, K, V] = [raw(q!), raw(k!), raw(v!)] as F[];
  const o = floats(wide, B * S * H * dv);
  const lse = floats(wide, B * H * S);
  const qs = buf(wide, 'q', S * dq);
  const ks = buf(wide, 'k', S * dq);
  const vs = buf(wide, 'v', S * dv);
  const sc = buf(wide, 's', S * S);
  const os = buf(wide, 'o', S * dv);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      gatherHead(Q!, qs, b, h, S, H, dq);
      gatherHead(K!, ks, b, h, S, H, dq);
      gatherHead(V!, vs, b, h, S, H, dv);
      mm(S, S, dq, qs, false, ks, true, sc);
      probabilities(sc, S, scale, lse, (b * H + h) * S, null);
      mm(S, dv, S, sc, false, vs, false, os);
      scatterHead(o, os, b, h, S, H, dv);
    }
  return [wrap(q!.dtype, [B, S, H, dv], o), wrap(q!.dtype, [B, H, S], lse)];
}

export function causalAttentionBackwardKernel(
  _b: Backend,
  [q, k, v, o, lse, dO]: KernelTensor[],
  { scale }: { scale: number },
): KernelTensor[] {
  const { B, S, H, dq, dv, wide } = dimsOf(q!, v!);
  const [Q, K, V, O, L, DO] = [q, k, v, o, lse, dO].map((t) => raw(t!)) as F[];
  const dQ = floats(wide, Q!.length);
  const dK = floats(wide, K!.length);
  const dV = floats(wide, V!.length);
  const qs = buf(wide, 'q', S * dq);
  const ks = buf(wide, 'k', S * dq);
  const vs = buf(wide, 'v', S * dv);
  const os = buf(wide, 'o', S * dv);
  const gs = buf(wide, 'g', S * dv);
  const p = buf(wide, 's', S * S);
  const dp = buf(wide, 'dp', S * S);
  const rowDot = buf(wide, 'D', S);
  const outQ = buf(wide, 'dq', S * dq);
  const outK = buf(wide, 'dk', S * dq);
  const outV = buf(wide, 'dv', S * dv);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      gatherHead(Q!, qs, b, h, S, H, dq);
      gatherHead(K!, ks, b, h, S, H, dq);
      gatherHead(V!, vs, b, h, S, H, dv);
      gatherHead(O!, os, b, h, S, H, dv);
      gatherHead(DO!, gs, b, h, S, H, dv);
      mm(S, S, dq, qs, false, ks, true, p);
      probabilities(p, S, scale, null, (b * H + h) * S, L!);
      mm(S, dv, S, p, true, gs, false, outV); // dV = Pᵀ dO
      mm(S, S, dv, gs, false, vs, true, dp); // dP = dO Vᵀ
      // dS = P ∘ (dP − rowsum(dO ∘ O)) · scale, the softmax backward with the scale folded in.
      for (let i = 0; i < S; i++) {
        let s = 0;
        for (let j = 0; j < dv; j++) s += gs[i * dv + j]! * os[i * dv + j]!;
        rowDot[i] = s;
      }
      for (let i = 0; i < S; i++) {
        const r = i * S;
        const di = rowDot[i]!;
        for (let j = 0; j <= i; j++) dp[r + j] = p[r + j]! * (dp[r + j]! - di) * scale;
        dp.fill(0, r + i + 1, r + S); // above the diagonal P is 0
      }
      mm(S, dq, S, dp, false, ks, false, outQ); // dQ = dS K
      mm(S, dq, S, dp, true, qs, false, outK); // dK = dSᵀ Q
      scatterHead(dQ, outQ, b, h, S, H, dq);
      scatterHead(dK, outK, b, h, S, H, dq);
      scatterHead(dV, outV, b, h, S, H, dv);
    }
  return [wrap(q!.dtype, q!.shape, dQ), wrap(q!.dtype, k!.shape, dK), wrap(q!.dtype, v!.shape, dV)];
}
