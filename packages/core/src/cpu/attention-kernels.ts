// Fused causal attention on the CPU, forward and backward, for training. Inputs stay in the
// [B, S, H, d] layout the projections produce (no permuted copies); the (batch, head) pairs are
// gathered side by side into reused scratch, each product runs for all of them as one batched GEMM
// call (f32; a plain loop for f64, which gradient checks use), and the S x S probabilities live only in scratch: the backward recomputes them from
// the saved row log-sum-exps instead of keeping B·H·S² values per layer.
//   causalAttention          [q, k, v] → [o, lse]          o [B,S,H,dv], lse [B,H,S]
//   causalAttentionBackward  [q, k, v, o, lse, dO] → [dq, dk, dv]
import type { Backend, KernelTensor } from '../backend.js';
import { raw, wrap } from './backend.js';
import { allocResident, freeResident, isResident, sgemm } from './gemm/index.js';
import {
  type TrainingAttentionArgs,
  trainingAttentionBackward,
  trainingAttentionForward,
  trainingAttentionRuns,
} from './gemm/training-attention.js';
import { takeF32 } from './pool.js';
import { expInPlace } from './vector-exp.js';

export type F = Float32Array | Float64Array;

// Scratch reused across calls (grown on demand), one set per float width. The f32 set lives in the
// GEMM engine's memory where it can, so the products read their operands and write their results
// in place instead of copying them in and out of WebAssembly memory per head.
const scratch = { f32: new Map<string, Float32Array>(), f64: new Map<string, Float64Array>() };
export function buf(wide: boolean, name: string, n: number): F {
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

/**
 * C_t[m,n] = op(A_t) · op(B_t) for t < count, the items `size` elements apart in A, B and C (A_t stored
 * [k,m] when transA, B_t [n,k] when transB): one batched GEMM call for every head of a group.
 */
function mm(count: number, m: number, n: number, k: number, A: F, transA: boolean, B: F, transB: boolean, C: F): void {
  if (A instanceof Float32Array) {
    const [a, b, c] = [A, B as Float32Array, C as Float32Array];
    sgemm({ m, n, k, a, transA, b, transB, c, batch: count, strideA: m * k, strideB: k * n, strideC: m * n });
    return;
  }
  for (let t = 0; t < count; t++) {
    const [ao, bo, co] = [t * m * k, t * k * n, t * m * n];
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++)
          s += A[ao + (transA ? p * m + i : i * k + p)]! * B[bo + (transB ? j * k + p : p * n + j)]!;
        C[co + i * n + j] = s;
      }
  }
}

/** A kernel's output array (f32 from the free list). */
export const floats = (wide: boolean, n: number): F => (wide ? new Float64Array(n) : takeF32(n));

/** Copies head h of batch b of x [B, S, H, d] into dst [S, d] at dst[at]. */
function gatherHead(x: F, dst: F, at: number, b: number, h: number, S: number, H: number, d: number): void {
  let from = (b * S * H + h) * d;
  const step = H * d;
  for (let s = 0, o = at; s < S; s++, from += step, o += d) for (let j = 0; j < d; j++) dst[o + j] = x[from + j]!;
}

/** Writes src [S, d] at src[at] into head h of batch b of x [B, S, H, d]. */
function scatterHead(x: F, src: F, at: number, b: number, h: number, S: number, H: number, d: number): void {
  let to = (b * S * H + h) * d;
  const step = H * d;
  for (let s = 0, o = at; s < S; s++, to += step, o += d) for (let j = 0; j < d; j++) x[to + j] = src[o + j]!;
}

/**
 * Where one (batch, head)'s operands come from and where its gradients go: the plain [B, S, H, d]
 * layout here, MLA's packed layout with a decoupled rotary part in rope-attention-kernels.ts. A head's
 * block [S, d] is read from / written to the scratch array at element `at` (heads of a group side by
 * side). Gradients of a head are stored in the order q, k, v, heads in the order b·H + h.
 */
export interface HeadLayout {
  B: number;
  S: number;
  H: number;
  /** query/key width and value width */
  dq: number;
  dv: number;
  wide: boolean;
  loadQ(b: number, h: number, dst: F, at: number): void;
  loadK(b: number, h: number, dst: F, at: number): void;
  loadV(b: number, h: number, dst: F, at: number): void;
  storeQ(b: number, h: number, src: F, at: number): void;
  storeK(b: number, h: number, src: F, at: number): void;
  storeV(b: number, h: number, src: F, at: number): void;
}

/** The most floats one scratch block of S x S scores holds (the backward keeps two); see setAttentionScoreBudget. */
const DEFAULT_SCORE_FLOATS = 1 << 22;
let maxScoreFloats = DEFAULT_SCORE_FLOATS;

/**
 * Bounds the fused CPU attention's score scratch: each batched GEMM call covers as many (batch, head)
 * pairs as fit `floats` S x S scores (at least one; the backward keeps two such blocks). Fewer pairs
 * per call use less memory and make more calls; results are bitwise the same. No argument: the
 * default, 2^22 floats (16 MiB per block).
 */
export function setAttentionScoreBudget(floats: number = DEFAULT_SCORE_FLOATS): void {
  if (!Number.isInteger(floats) || floats < 1)
    throw new RangeError(`setAttentionScoreBudget: expected a positive integer number of floats, got ${floats}`);
  maxScoreFloats = floats;
}

/**
 * (batch, head) pairs whose products run as one batched GEMM call: all `pairs` where their S x S
 * scores stay within the score budget (setAttentionScoreBudget). Each head's products are the same sums in the
 * same order whatever the group (see mm).
 */
function headsPerCall(S: number, pairs: number): number {
  return Math.max(1, Math.min(pairs, scorePairs(S)));
}

/** (batch, head) pairs whose S x S scores fit the score budget (0 when not even one does). */
export function scorePairs(S: number): number {
  return Math.floor(maxScoreFloats / (S * S));
}

/** Scores of one head into `sc` [S, S]: scale·q·kᵀ, then the causal softmax in place (masked entries 0). */
function probabilities(sc: F, S: number, scale: number, lse: F | null, lseAt: number, saved: F | null): void {
  if (sc instanceof Float32Array) {
    probabilitiesF32(sc, S, scale, lse, lseAt, saved);
    return;
  }
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

/**
 * The f32 form: every row's exponent arguments first (masked entries −∞), then one vectorized exp
 * over the whole [S, S] block (expInPlace), then the rows' sums.
 */
function probabilitiesF32(
  sc: Float32Array,
  S: number,
  scale: number,
  lse: F | null,
  lseAt: number,
  saved: F | null,
): void {
  const rowMax = saved ? null : buf(false, 'rowMax', S);
  for (let i = 0; i < S; i++) {
    const r = i * S;
    let m: number;
    if (saved) m = saved[lseAt + i]!;
    else {
      m = -Infinity;
      for (let j = 0; j <= i; j++) m = Math.max(m, sc[r + j]! * scale);
      rowMax![i] = m;
    }
    for (let j = 0; j <= i; j++) sc[r + j] = sc[r + j]! * scale - m;
    sc.fill(-Infinity, r + i + 1, r + S);
  }
  expInPlace(sc, 0, S * S);
  if (saved) return;
  for (let i = 0; i < S; i++) {
    const r = i * S;
    let z = 0;
    for (let j = 0; j <= i; j++) z += sc[r + j]!;
    const inv = 1 / z;
    for (let j = 0; j <= i; j++) sc[r + j] = sc[r + j]! * inv;
    lse![lseAt + i] = rowMax![i]! + Math.log(z);
  }
}

/** The forward over every (batch, head) of a layout: o [B, S, H, dv] and the row log-sum-exps [B, H, S]. */
export function attendForward(L: HeadLayout, scale: number): { o: F; lse: F } {
  const { B, S, H, dq, dv, wide } = L;
  const G = headsPerCall(S, B * H);
  const o = floats(wide, B * S * H * dv);
  const lse = floats(wide, B * H * S);
  const qs = buf(wide, 'q', G * S * dq);
  const ks = buf(wide, 'k', G * S * dq);
  const vs = buf(wide, 'v', G * S * dv);
  const sc = buf(wide, 's', G * S * S);
  const os = buf(wide, 'o', G * S * dv);
  // Heads u = b·H + h in order, G per group.
  for (let u0 = 0; u0 < B * H; u0 += G) {
    const g = Math.min(G, B * H - u0);
    for (let t = 0, u = u0; t < g; t++, u++) {
      L.loadQ(Math.floor(u / H), u % H, qs, t * S * dq);
      L.loadK(Math.floor(u / H), u % H, ks, t * S * dq);
      L.loadV(Math.floor(u / H), u % H, vs, t * S * dv);
    }
    mm(g, S, S, dq, qs, false, ks, true, sc);
    for (let t = 0; t < g; t++)
      probabilities(sc.subarray(t * S * S, (t + 1) * S * S), S, scale, lse, (u0 + t) * S, null);
    mm(g, S, dv, S, sc, false, vs, false, os);
    for (let t = 0, u = u0; t < g; t++, u++) scatterHead(o, os, t * S * dv, Math.floor(u / H), u % H, S, H, dv);
  }
  return { o, lse };
}

/** The backward over every (batch, head) of a layout, its gradients handed to the layout's stores. */
export function attendBackward(L: HeadLayout, O: F, lse: F, dO: F, scale: number): void {
  const { B, S, H, dq, dv, wide } = L;
  const G = headsPerCall(S, B * H);
  const qs = buf(wide, 'q', G * S * dq);
  const ks = buf(wide, 'k', G * S * dq);
  const vs = buf(wide, 'v', G * S * dv);
  const os = buf(wide, 'o', G * S * dv);
  const gs = buf(wide, 'g', G * S * dv);
  const p = buf(wide, 's', G * S * S);
  const dp = buf(wide, 'dp', G * S * S);
  const rowDot = buf(wide, 'D', S);
  const outQ = buf(wide, 'dq', G * S * dq);
  const outK = buf(wide, 'dk', G * S * dq);
  const outV = buf(wide, 'dv', G * S * dv);
  for (let u0 = 0; u0 < B * H; u0 += G) {
    const g = Math.min(G, B * H - u0);
    for (let t = 0, u = u0; t < g; t++, u++) {
      const [b, h] = [Math.floor(u / H), u % H];
      L.loadQ(b, h, qs, t * S * dq);
      L.loadK(b, h, ks, t * S * dq);
      L.loadV(b, h, vs, t * S * dv);
      gatherHead(O, os, t * S * dv, b, h, S, H, dv);
      gatherHead(dO, gs, t * S * dv, b, h, S, H, dv);
    }
    mm(g, S, S, dq, qs, false, ks, true, p);
    for (let t = 0; t < g; t++)
      probabilities(p.subarray(t * S * S, (t + 1) * S * S), S, scale, null, (u0 + t) * S, lse);
    mm(g, S, dv, S, p, true, gs, false, outV); // dV = Pᵀ dO
    mm(g, S, S, dv, gs, false, vs, true, dp); // dP = dO Vᵀ
    // dS = P ∘ (dP − rowsum(dO ∘ O)) · scale, the softmax backward with the scale folded in.
    for (let t = 0; t < g; t++) {
      const [hv, hs] = [t * S * dv, t * S * S];
      for (let i = 0; i < S; i++) {
        let s = 0;
        for (let j = 0; j < dv; j++) s += gs[hv + i * dv + j]! * os[hv + i * dv + j]!;
        rowDot[i] = s;
      }
      for (let i = 0; i < S; i++) {
        const r = hs + i * S;
        const di = rowDot[i]!;
        for (let j = 0; j <= i; j++) dp[r + j] = p[r + j]! * (dp[r + j]! - di) * scale;
        dp.fill(0, r + i + 1, r + S); // above the diagonal P is 0
      }
    }
    mm(g, S, dq, S, dp, false, ks, false, outQ); // dQ = dS K
    mm(g, S, dq, S, dp, true, qs, false, outK); // dK = dSᵀ Q
    for (let t = 0, u = u0; t < g; t++, u++) {
      const [b, h] = [Math.floor(u / H), u % H];
      L.storeQ(b, h, outQ, t * S * dq);
      L.storeK(b, h, outK, t * S * dq);
      L.storeV(b, h, outV, t * S * dv);
    }
  }
}

/** The plain layout: q, k [B, S, H, dq] and v [B, S, H, dv], gradients into fresh arrays of those shapes. */
function plainLayout(Q: F, K: F, V: F, [B, S, H, dq]: number[], dv: number, wide: boolean, grads: F[] = []) {
  const [dQ, dK, dV] = grads;
  return {
    B: B!,
    S: S!,
    H: H!,
    dq: dq!,
    dv,
    wide,
    loadQ: (b, h, dst, at) => gatherHead(Q, dst, at, b, h, S!, H!, dq!),
    loadK: (b, h, dst, at) => gatherHead(K, dst, at, b, h, S!, H!, dq!),
    loadV: (b, h, dst, at) => gatherHead(V, dst, at, b, h, S!, H!, dv),
    storeQ: (b, h, src, at) => scatterHead(dQ!, src, at, b, h, S!, H!, dq!),
    storeK: (b, h, src, at) => scatterHead(dK!, src, at, b, h, S!, H!, dq!),
    storeV: (b, h, src, at) => scatterHead(dV!, src, at, b, h, S!, H!, dv),
  } satisfies HeadLayout;
}

/** The f32 plain layout as the GEMM engine's attention job reads it. */
function plainJobArgs(q: KernelTensor, k: KernelTensor, v: KernelTensor, scale: number): TrainingAttentionArgs {
  const [B, S, H, dq] = q.shape as [number, number, number, number];
  const dv = v.shape[3]!;
  const heads = (t: KernelTensor, width: number) =>
    ({ data: raw(t) as Float32Array, layout: 'heads', width, offset: 0 }) as const;
  return {
    B,
    S,
    H,
    dq,
    dv,
    scale,
    q: heads(q, dq),
    k: heads(k, dq),
    kShared: null,
    v: heads(v, dv),
    maxPairs: scorePairs(S),
    rotary: null,
  };
}

export function causalAttentionKernel(
  _b: Backend,
  [q, k, v]: KernelTensor[],
  { scale }: { scale: number },
): KernelTensor[] {
  const wide = q!.dtype === 'f64';
  const [B, S, H] = q!.shape as [number, number, number];
  const dv = v!.shape[3]!;
  if (!wide && trainingAttentionRuns()) {
    const [o, lse] = [takeF32(B * S * H * dv), takeF32(B * H * S)];
    trainingAttentionForward(plainJobArgs(q!, k!, v!, scale), o, lse);
    return [wrap(q!.dtype, [B, S, H, dv], o), wrap(q!.dtype, [B, H, S], lse)];
  }
  const [Q, K, V] = [raw(q!), raw(k!), raw(v!)] as F[];
  const { o, lse } = attendForward(plainLayout(Q!, K!, V!, q!.shape as number[], dv, wide), scale);
  return [wrap(q!.dtype, [B, S, H, dv], o), wrap(q!.dtype, [B, H, S], lse)];
}

export function causalAttentionBackwardKernel(
  _b: Backend,
  [q, k, v, o, lse, dO]: KernelTensor[],
  { scale }: { scale: number },
): KernelTensor[] {
  const wide = q!.dtype === 'f64';
  const [Q, K, V, O, L, DO] = [q, k, v, o, lse, dO].map((t) => raw(t!)) as F[];
  const grads = [floats(wide, Q!.length), floats(wide, K!.length), floats(wide, V!.length)];
  if (!wide && trainingAttentionRuns()) {
    const [dQ, dK, dV] = grads as Float32Array[];
    const a = plainJobArgs(q!, k!, v!, scale);
    trainingAttentionBackward(a, O as Float32Array, L as Float32Array, DO as Float32Array, {
      dq: { ...a.q, data: dQ! },
      dk: { ...a.k, data: dK! },
      dkShared: null,
      dv: { ...a.v, data: dV! },
    });
  } else attendBackward(plainLayout(Q!, K!, V!, q!.shape as number[], v!.shape[3]!, wide, grads), O!, L!, DO!, scale);
  return [
    wrap(q!.dtype, q!.shape, grads[0]!),
    wrap(q!.dtype, k!.shape, grads[1]!),
    wrap(q!.dtype, v!.shape, grads[2]!),
  ];
}
