// Fused causal attention on the CPU, forward and backward, for training. Inputs stay in the
// [B, S, H, d] layout the projections produce: each operand is copied whole (one TypedArray.set) into
// scratch in the GEMM engine's memory, and every product reads each head's [S, d] slice there in place
// through the GEMM's row pitch (lda = H·d) and writes its result likewise — no per-head gathers or
// stores. The (batch, head) pairs of a call run as one batched GEMM (f32; a plain loop for f64, which
// gradient checks use), and the S x S probabilities live only in scratch: the backward recomputes them
// from the saved row log-sum-exps instead of keeping B·H·S² values per layer.
//   causalAttention          [q, k, v] → [o, lse]          o [B,S,H,dv], lse [B,H,S]
//   causalAttentionBackward  [q, k, v, o, lse, dO] → [dq, dk, dv]
import type { Backend, KernelTensor } from '../backend.js';
import { raw, wrap } from './backend.js';
import { allocResident, freeResident, isResident, sgemm } from './gemm/index.js';
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
 * A matrix operand of a batched product: item t's [rows, cols] starts at x[off + t·stride], its rows
 * `ld` apart — a head's [S, d] slice read where it lies in a [B, S, H, d] tensor, or a dense scratch block.
 */
interface Operand {
  x: F;
  off: number;
  ld: number;
  stride: number;
}

/**
 * C_t[m,n] = op(A_t) · op(B_t) for t < count (A_t stored [k,m] when transA, B_t [n,k] when transB):
 * one batched GEMM call for every head of a group. The f64 form (gradient checks) is a plain loop.
 */
function mm(
  count: number,
  m: number,
  n: number,
  k: number,
  A: Operand,
  transA: boolean,
  B: Operand,
  transB: boolean,
  C: Operand,
): void {
  if (A.x instanceof Float32Array) {
    sgemm({
      m,
      n,
      k,
      batch: count,
      a: A.x,
      aOffset: A.off,
      lda: A.ld,
      strideA: A.stride,
      transA,
      b: B.x as Float32Array,
      bOffset: B.off,
      ldb: B.ld,
      strideB: B.stride,
      transB,
      c: C.x as Float32Array,
      cOffset: C.off,
      ldc: C.ld,
      strideC: C.stride,
    });
    return;
  }
  for (let t = 0; t < count; t++) {
    const [ao, bo, co] = [A.off + t * A.stride, B.off + t * B.stride, C.off + t * C.stride];
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++)
          s += A.x[ao + (transA ? p * A.ld + i : i * A.ld + p)]! * B.x[bo + (transB ? j * B.ld + p : p * B.ld + j)]!;
        C.x[co + i * C.ld + j] = s;
      }
  }
}

/** A kernel's output array (f32 from the free list). */
export const floats = (wide: boolean, n: number): F => (wide ? new Float64Array(n) : takeF32(n));

/**
 * Every head's columns [c, c + d) of a [B, S, H, w] tensor `x`: head (b, h)'s [S, d] block starts at
 * ((b·S)·H + h)·w + c, its rows H·w apart.
 */
export interface Heads {
  x: F;
  w: number;
  c: number;
}

/**
 * (batch, head) pairs of one batched call: `count` of them from (b, h), along the batch (b, b+1, …;
 * same head) or along the heads (h, h+1, …; same batch row) — either way a constant element stride
 * between items, which is what the GEMM's batch needs.
 */
interface Call {
  b: number;
  h: number;
  count: number;
  alongB: boolean;
}

/** The heads of `call` in `t` as GEMM operands (S rows). */
function headsOf(t: Heads, call: Call, S: number, H: number): Operand {
  const ld = H * t.w;
  return { x: t.x, off: (call.b * S * H + call.h) * t.w + t.c, ld, stride: call.alongB ? S * ld : t.w };
}

/** A dense scratch block of [rows, cols] items, item t at t·rows·cols. */
const dense = (x: F, rows: number, cols: number): Operand => ({ x, off: 0, ld: cols, stride: rows * cols });

/**
 * The batched calls over all B·H pairs, at most `G` pairs each: along whichever of B and H is longer
 * (fewer calls); the pair (b, h) of item t of a call is (b + t, h) or (b, h + t).
 */
function callsOf(B: number, H: number, G: number): Call[] {
  const alongB = B >= H;
  const [outer, inner] = alongB ? [H, B] : [B, H];
  const calls: Call[] = [];
  for (let x = 0; x < outer; x++)
    for (let y = 0; y < inner; y += G) {
      const count = Math.min(G, inner - y);
      calls.push(alongB ? { b: y, h: x, count, alongB } : { b: x, h: y, count, alongB });
    }
  return calls;
}

/** Pair u = b·H + h of item t of a call (where its log-sum-exps live: [B, H, S]). */
const pairOf = (c: Call, t: number, H: number): number => (c.alongB ? (c.b + t) * H + c.h : c.b * H + c.h + t);

/** A copy of `x` in scratch `name` (f32: in the GEMM engine's memory, so the products read it in place). */
export function staged(wide: boolean, name: string, x: F): F {
  const s = buf(wide, name, x.length);
  s.set(x);
  return s;
}

/**
 * Where the operands come from and where the gradients go: the plain [B, S, H, d] layout here, MLA's
 * packed layout with a decoupled rotary part in rope-attention-kernels.ts. `operands` gives q, k
 * (width dq) and v (width dv) as per-head views of tensors laid out [B, S, H, ·]; `storeGrads` takes
 * the per-pair gradients as dense [B, S, H, dq] (dq, dk) and [B, S, H, dv] (dv) tensors.
 */
export interface HeadLayout {
  B: number;
  S: number;
  H: number;
  /** query/key width and value width */
  dq: number;
  dv: number;
  wide: boolean;
  operands(): { q: Heads; k: Heads; v: Heads };
  storeGrads(dq: F, dk: F, dv: F): void;
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
  return Math.max(1, Math.min(pairs, Math.floor(maxScoreFloats / (S * S))));
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
  const { q, k, v } = L.operands();
  const sc = buf(wide, 's', G * S * S);
  // o is written per head in place, into scratch the GEMM writes directly (then one copy out).
  const os: Heads = { x: buf(wide, 'o', o.length), w: dv, c: 0 };
  for (const c of callsOf(B, H, G)) {
    mm(c.count, S, S, dq, headsOf(q, c, S, H), false, headsOf(k, c, S, H), true, dense(sc, S, S));
    for (let t = 0; t < c.count; t++)
      probabilities(sc.subarray(t * S * S, (t + 1) * S * S), S, scale, lse, pairOf(c, t, H) * S, null);
    mm(c.count, S, dv, S, dense(sc, S, S), false, headsOf(v, c, S, H), false, headsOf(os, c, S, H));
  }
  o.set(os.x.subarray(0, o.length));
  return { o, lse };
}

/** rowDot[(b·H + h)·S + s] = Σ_j dO[b,s,h,j]·O[b,s,h,j] (the softmax backward's row terms), in memory order. */
function rowDots(O: F, dO: F, B: number, S: number, H: number, dv: number, out: F): void {
  for (let b = 0; b < B; b++)
    for (let s = 0; s < S; s++)
      for (let h = 0; h < H; h++) {
        const at = ((b * S + s) * H + h) * dv;
        let d = 0;
        for (let j = 0; j < dv; j++) d += dO[at + j]! * O[at + j]!;
        out[(b * H + h) * S + s] = d;
      }
}

/** The backward over every (batch, head) of a layout, its gradients handed to the layout's storeGrads. */
export function attendBackward(L: HeadLayout, O: F, lse: F, dO: F, scale: number): void {
  const { B, S, H, dq, dv, wide } = L;
  const G = headsPerCall(S, B * H);
  const { q, k, v } = L.operands();
  const gs: Heads = { x: staged(wide, 'dO', dO), w: dv, c: 0 };
  const p = buf(wide, 's', G * S * S);
  const dp = buf(wide, 'dp', G * S * S);
  const rowDot = buf(wide, 'D', B * H * S);
  rowDots(O, dO, B, S, H, dv, rowDot);
  const outQ: Heads = { x: buf(wide, 'dq', B * S * H * dq), w: dq, c: 0 };
  const outK: Heads = { x: buf(wide, 'dk', B * S * H * dq), w: dq, c: 0 };
  const outV: Heads = { x: buf(wide, 'dv', B * S * H * dv), w: dv, c: 0 };
  for (const c of callsOf(B, H, G)) {
    const [qc, kc, gc] = [headsOf(q, c, S, H), headsOf(k, c, S, H), headsOf(gs, c, S, H)];
    mm(c.count, S, S, dq, qc, false, kc, true, dense(p, S, S));
    for (let t = 0; t < c.count; t++)
      probabilities(p.subarray(t * S * S, (t + 1) * S * S), S, scale, null, pairOf(c, t, H) * S, lse);
    mm(c.count, S, dv, S, dense(p, S, S), true, gc, false, headsOf(outV, c, S, H)); // dV = Pᵀ dO
    mm(c.count, S, S, dv, gc, false, headsOf(v, c, S, H), true, dense(dp, S, S)); // dP = dO Vᵀ
    // dS = P ∘ (dP − rowsum(dO ∘ O)) · scale, the softmax backward with the scale folded in.
    for (let t = 0; t < c.count; t++) {
      const [hs, rd] = [t * S * S, pairOf(c, t, H) * S];
      for (let i = 0; i < S; i++) {
        const r = hs + i * S;
        const di = rowDot[rd + i]!;
        for (let j = 0; j <= i; j++) dp[r + j] = p[r + j]! * (dp[r + j]! - di) * scale;
        dp.fill(0, r + i + 1, r + S); // above the diagonal P is 0
      }
    }
    mm(c.count, S, dq, S, dense(dp, S, S), false, kc, false, headsOf(outQ, c, S, H)); // dQ = dS K
    mm(c.count, S, dq, S, dense(dp, S, S), true, qc, false, headsOf(outK, c, S, H)); // dK = dSᵀ Q
  }
  L.storeGrads(outQ.x, outK.x, outV.x);
}

/** The plain layout: q, k [B, S, H, dq] and v [B, S, H, dv], gradients copied into `grads` (those shapes). */
function plainLayout(Q: F, K: F, V: F, [B, S, H, dq]: number[], dv: number, wide: boolean, grads: F[] = []) {
  return {
    B: B!,
    S: S!,
    H: H!,
    dq: dq!,
    dv,
    wide,
    operands: () => ({
      q: { x: staged(wide, 'q', Q), w: dq!, c: 0 },
      k: { x: staged(wide, 'k', K), w: dq!, c: 0 },
      v: { x: staged(wide, 'v', V), w: dv, c: 0 },
    }),
    storeGrads(dQ: F, dK: F, dV: F) {
      [dQ, dK, dV].forEach((g, i) => grads[i]!.set(g.subarray(0, grads[i]!.length)));
    },
  } satisfies HeadLayout;
}

export function causalAttentionKernel(
  _b: Backend,
  [q, k, v]: KernelTensor[],
  { scale }: { scale: number },
): KernelTensor[] {
  const wide = q!.dtype === 'f64';
  const [Q, K, V] = [raw(q!), raw(k!), raw(v!)] as F[];
  const [B, S, H] = q!.shape as [number, number, number];
  const dv = v!.shape[3]!;
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
  attendBackward(plainLayout(Q!, K!, V!, q!.shape as number[], v!.shape[3]!, wide, grads), O!, L!, DO!, scale);
  return [
    wrap(q!.dtype, q!.shape, grads[0]!),
    wrap(q!.dtype, k!.shape, grads[1]!),
    wrap(q!.dtype, v!.shape, grads[2]!),
  ];
}
