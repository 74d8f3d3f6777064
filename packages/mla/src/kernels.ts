// Absorbed-MLA attention kernels. Queries are in latent space: q' = q_nope·W_UK [.., H, d_c] and the
// rotated q_R [.., H, d_R]; every head attends to the same keys (the cached c_KV and k_R rows) and
// the value is c_KV itself, so one latent row serves all heads.
//
// Two ops are registered for 'cpu' through core's kernel registry:
//   'mla.flashPrefill'    contiguous latents, causal, tiled with an online softmax (no S x T scores)
//   'mla.pagedAttention'  latents in a PagedLatentCache pool, read through block tables; decode is
//                         S = 1 (each latent row is read once for all heads), chunked prefill S > 1
// Both accumulate in float64 and are inference-only (no autograd). On backends without the kernels,
// or when a gradient is needed, the same math runs composed from core ops (differentiable).
import {
  add,
  causalMask,
  cpu,
  CpuStorage,
  hasKernel,
  isGradEnabled,
  matmul,
  mul,
  registerKernel,
  reshape,
  runKernel,
  softmax,
  tensor,
  Tensor,
  type Backend,
  type KernelTensor,
} from '@dsv3/core';
import type { PagedLatentCache } from './cache.js';
import { registerMlaWebGpuKernels } from './webgpu.js';

type F = Float32Array | Float64Array;

export const FLASH_PREFILL_OP = 'mla.flashPrefill';
export const PAGED_ATTENTION_OP = 'mla.pagedAttention';

export interface FlashPrefillAttrs {
  scale: number;
  /** query s sees keys j <= causalOffset + s */
  causalOffset: number;
}

export interface PagedAttentionAttrs {
  scale: number;
  blockSize: number;
}

export type AttentionImpl = 'auto' | 'kernel' | 'composed';

// ---------------------------------------------------------------------------------------------
// The CPU inner loop: one sequence's S x H query rows against T latent rows.

interface Keys {
  kv: F;
  kr: F;
  /** pool row of key j (paged), or null: row = base + j (contiguous) */
  rowOf: Int32Array | null;
  base: number;
}

const TILE_K = 64;
const TILE_ROWS = 64;

function attendSequence(qL: F, qLo: number, qR: F, qRo: number, S: number, H: number, C: number, R: number, keys: Keys, T: number, offset: number, scale: number, out: F, outO: number): void {
  const tq = Math.max(1, Math.floor(TILE_ROWS / H));
  const maxRows = Math.min(tq, S) * H;
  const qs = new Float64Array(maxRows * C);
  const qrs = new Float64Array(maxRows * R);
  const m = new Float64Array(maxRows);
  const l = new Float64Array(maxRows);
  const acc = new Float64Array(maxRows * C);
  const sc = new Float64Array(maxRows * TILE_K);
  const rowLimit = new Int32Array(maxRows);
  const { kv, kr, rowOf, base } = keys;
  for (let s0 = 0; s0 < S; s0 += tq) {
    const s1 = Math.min(S, s0 + tq);
    const rows = (s1 - s0) * H;
    for (let i = 0; i < rows * C; i++) qs[i] = qL[qLo + s0 * H * C + i]! * scale;
    for (let i = 0; i < rows * R; i++) qrs[i] = qR[qRo + s0 * H * R + i]! * scale;
    m.fill(-Infinity, 0, rows);
    l.fill(0, 0, rows);
    acc.fill(0, 0, rows * C);
    for (let r = 0; r < rows; r++) rowLimit[r] = offset + s0 + Math.floor(r / H);
    const kEnd = Math.min(T, offset + s1);
    for (let k0 = 0; k0 < kEnd; k0 += TILE_K) {
      const n = Math.min(TILE_K, kEnd - k0);
      // scores
      for (let t = 0; t < n; t++) {
        const j = k0 + t;
        const row = rowOf ? rowOf[j]! : base + j;
        const kvo = row * C;
        const kro = row * R;
        for (let r = 0; r < rows; r++) {
          if (j > rowLimit[r]!) {
            sc[r * TILE_K + t] = -Infinity;
            continue;
          }
          let d0 = 0;
          let d1 = 0;
          let d2 = 0;
          let d3 = 0;
          const qo = r * C;
          let c = 0;
          for (; c + 3 < C; c += 4) {
            d0 += qs[qo + c]! * kv[kvo + c]!;
            d1 += qs[qo + c + 1]! * kv[kvo + c + 1]!;
            d2 += qs[qo + c + 2]! * kv[kvo + c + 2]!;
            d3 += qs[qo + c + 3]! * kv[kvo + c + 3]!;
          }
          for (; c < C; c++) d0 += qs[qo + c]! * kv[kvo + c]!;
          const qro = r * R;
          for (let i = 0; i < R; i++) d1 += qrs[qro + i]! * kr[kro + i]!;
          sc[r * TILE_K + t] = d0 + d1 + d2 + d3;
        }
      }
      // online softmax: new running max, rescale what was accumulated, exponentiate the tile
      for (let r = 0; r < rows; r++) {
        const so = r * TILE_K;
        let mt = -Infinity;
        for (let t = 0; t < n; t++) if (sc[so + t]! > mt) mt = sc[so + t]!;
        if (mt === -Infinity) {
          sc.fill(0, so, so + n);
          continue;
        }
        const mo = m[r]!;
        const mn = mo > mt ? mo : mt;
        if (mo !== -Infinity && mo !== mn) {
          const alpha = Math.exp(mo - mn);
          l[r] = l[r]! * alpha;
          const ao = r * C;
          for (let c = 0; c < C; c++) acc[ao + c] = acc[ao + c]! * alpha;
        }
        let sum = 0;
        for (let t = 0; t < n; t++) {
          const p = Math.exp(sc[so + t]! - mn);
          sc[so + t] = p;
          sum += p;
        }
        l[r] = l[r]! + sum;
        m[r] = mn;
      }
      // acc += P · V with V = the latent rows (each row read once for every query row)
      for (let t = 0; t < n; t++) {
        const row = rowOf ? rowOf[k0 + t]! : base + k0 + t;
        const kvo = row * C;
        for (let r = 0; r < rows; r++) {
          const p = sc[r * TILE_K + t]!;
          if (p === 0) continue;
          const ao = r * C;
          for (let c = 0; c < C; c++) acc[ao + c] = acc[ao + c]! + p * kv[kvo + c]!;
        }
      }
    }
    const oo = outO + s0 * H * C;
    for (let r = 0; r < rows; r++) {
      const inv = 1 / l[r]!;
      for (let c = 0; c < C; c++) out[oo + r * C + c] = acc[r * C + c]! * inv;
    }
  }
}

// The f32 path: the two score products and P·V of each tile run through core's CPU 'matmul' kernel
// (the WebAssembly SIMD GEMM); masking and the online softmax stay here, accumulating in float64.
// For decode (S = 1) every key tile is gathered once and multiplied against all H heads at once.

const GEMM_TILE_K = 512;
const GEMM_TILE_ROWS = 256;

function f32(shape: number[], a: Float32Array): KernelTensor {
  return { storage: new CpuStorage(a), shape, dtype: 'f32' };
}

function mm(a: KernelTensor, b: KernelTensor, transB: boolean): Float32Array {
  const [o] = runKernel<{ transA: boolean; transB: boolean }>('matmul', cpu, [a, b], { transA: false, transB });
  return (o!.storage as CpuStorage).data as Float32Array;
}

function attendSequenceGemm(qL: Float32Array, qLo: number, qR: Float32Array, qRo: number, S: number, H: number, C: number, R: number, kv: Float32Array, kr: Float32Array, rowOf: Int32Array | null, base: number, T: number, offset: number, scale: number, out: F, outO: number): void {
  const tq = Math.max(1, Math.floor(GEMM_TILE_ROWS / H));
  const maxRows = Math.min(tq, S) * H;
  const m = new Float64Array(maxRows);
  const l = new Float64Array(maxRows);
  const acc = new Float64Array(maxRows * C);
  const vt = rowOf ? new Float32Array(GEMM_TILE_K * C) : null;
  const krt = rowOf ? new Float32Array(GEMM_TILE_K * R) : null;
  for (let s0 = 0; s0 < S; s0 += tq) {
    const s1 = Math.min(S, s0 + tq);
    const rows = (s1 - s0) * H;
    const qc = new Float32Array(rows * C);
    const qrr = new Float32Array(rows * R);
    for (let i = 0; i < rows * C; i++) qc[i] = qL[qLo + s0 * H * C + i]! * scale;
    for (let i = 0; i < rows * R; i++) qrr[i] = qR[qRo + s0 * H * R + i]! * scale;
    const qcT = f32([rows, C], qc);
    const qrT = f32([rows, R], qrr);
    m.fill(-Infinity, 0, rows);
    l.fill(0, 0, rows);
    acc.fill(0, 0, rows * C);
    const kEnd = Math.min(T, offset + s1);
    const p = new Float32Array(rows * GEMM_TILE_K);
    for (let k0 = 0; k0 < kEnd; k0 += GEMM_TILE_K) {
      const n = Math.min(GEMM_TILE_K, kEnd - k0);
      let vTile: Float32Array;
      let rTile: Float32Array;
      if (rowOf) {
        // gather the tile's rows, one contiguous run per block
        let t = 0;
        while (t < n) {
          const row = rowOf[k0 + t]!;
          let run = 1;
          while (t + run < n && rowOf[k0 + t + run] === row + run) run++;
          vt!.set(kv.subarray(row * C, (row + run) * C), t * C);
          krt!.set(kr.subarray(row * R, (row + run) * R), t * R);
          t += run;
        }
        vTile = vt!.subarray(0, n * C);
        rTile = krt!.subarray(0, n * R);
      } else {
        vTile = kv.subarray((base + k0) * C, (base + k0 + n) * C);
        rTile = kr.subarray((base + k0) * R, (base + k0 + n) * R);
      }
      const vT = f32([n, C], vTile);
      const s1s = mm(qcT, vT, true); // [rows, n]
      const s2s = mm(qrT, f32([n, R], rTile), true);
      for (let r = 0; r < rows; r++) {
        const lim = offset + s0 + Math.floor(r / H) - k0; // keys t <= lim are visible
        const so = r * n;
        const po = r * n;
        let mt = -Infinity;
        const vis = Math.min(n, lim + 1);
        for (let t = 0; t < vis; t++) {
          const v = s1s[so + t]! + s2s[so + t]!;
          if (v > mt) mt = v;
        }
        if (vis <= 0) {
          p.fill(0, po, po + n);
          continue;
        }
        const mo = m[r]!;
        const mn = mo > mt ? mo : mt;
        if (mo !== -Infinity && mo !== mn) {
          const alpha = Math.exp(mo - mn);
          l[r] = l[r]! * alpha;
          const ao = r * C;
          for (let c = 0; c < C; c++) acc[ao + c] = acc[ao + c]! * alpha;
        }
        let sum = 0;
        for (let t = 0; t < vis; t++) {
          const e = Math.exp(s1s[so + t]! + s2s[so + t]! - mn);
          p[po + t] = e;
          sum += e;
        }
        for (let t = vis; t < n; t++) p[po + t] = 0;
        l[r] = l[r]! + sum;
        m[r] = mn;
      }
      const o = mm(f32([rows, n], p.subarray(0, rows * n)), vT, false); // [rows, C]
      for (let i = 0; i < rows * C; i++) acc[i] = acc[i]! + o[i]!;
    }
    const oo = outO + s0 * H * C;
    for (let r = 0; r < rows; r++) {
      const inv = 1 / l[r]!;
      for (let c = 0; c < C; c++) out[oo + r * C + c] = acc[r * C + c]! * inv;
    }
  }
}

function attend(qL: F, qLo: number, qR: F, qRo: number, S: number, H: number, C: number, R: number, keys: Keys, T: number, offset: number, scale: number, out: F, outO: number): void {
  const { kv, kr } = keys;
  if (qL instanceof Float32Array && qR instanceof Float32Array && kv instanceof Float32Array && kr instanceof Float32Array) {
    attendSequenceGemm(qL, qLo, qR, qRo, S, H, C, R, kv, kr, keys.rowOf, keys.base, T, offset, scale, out, outO);
  } else {
    attendSequence(qL, qLo, qR, qRo, S, H, C, R, keys, T, offset, scale, out, outO);
  }
}

// ---------------------------------------------------------------------------------------------
// CPU kernels (registered under core's registry)

const data = (t: KernelTensor): F => {
  const d = (t.storage as CpuStorage).data;
  if (!(d instanceof Float32Array || d instanceof Float64Array)) throw new TypeError(`MLA kernels need f32 or f64 tensors, got ${t.dtype}`);
  return d;
};

const outArray = (dtype: string, n: number): F => (dtype === 'f64' ? new Float64Array(n) : new Float32Array(n));

/** inputs [qLat [B,S,H,C], qRope [B,S,H,R], ckv [B,T,C], kr [B,T,R]] → [out [B,S,H,C]] */
export function flashPrefillCpu(_b: Backend, inputs: KernelTensor[], attrs: FlashPrefillAttrs): KernelTensor[] {
  const [ql, qr, kv, kr] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  const [B, S, H, C] = ql.shape as [number, number, number, number];
  const R = qr.shape[3]!;
  const T = kv.shape[1]!;
  const out = outArray(ql.dtype, B * S * H * C);
  const qlD = data(ql);
  const qrD = data(qr);
  const keys: Keys = { kv: data(kv), kr: data(kr), rowOf: null, base: 0 };
  for (let b = 0; b < B; b++) {
    keys.base = b * T;
    attend(qlD, b * S * H * C, qrD, b * S * H * R, S, H, C, R, keys, T, attrs.causalOffset, attrs.scale, out, b * S * H * C);
  }
  return [{ storage: new CpuStorage(out), shape: [B, S, H, C], dtype: ql.dtype }];
}

/**
 * inputs [qLat [N,S,H,C], qRope [N,S,H,R], poolKv [nb,bs,C], poolKr [nb,bs,R], tables i32 [N,maxB],
 * lengths i32 [N]] → [out [N,S,H,C]]. Sequence n holds lengths[n] tokens, the last S of which are the
 * queries: query s sees keys j <= lengths[n] - S + s.
 */
export function pagedAttentionCpu(_b: Backend, inputs: KernelTensor[], attrs: PagedAttentionAttrs): KernelTensor[] {
  const [ql, qr, pkv, pkr, tab, len] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  const [N, S, H, C] = ql.shape as [number, number, number, number];
  const R = qr.shape[3]!;
  const bs = attrs.blockSize;
  const maxB = tab.shape[1]!;
  const tables = (tab.storage as CpuStorage).data as Int32Array;
  const lengths = (len.storage as CpuStorage).data as Int32Array;
  const out = outArray(ql.dtype, N * S * H * C);
  const qlD = data(ql);
  const qrD = data(qr);
  const keys: Keys = { kv: data(pkv), kr: data(pkr), rowOf: null, base: 0 };
  for (let n = 0; n < N; n++) {
    const T = lengths[n]!;
    const rowOf = new Int32Array(T);
    for (let j = 0; j < T; j++) rowOf[j] = tables[n * maxB + Math.floor(j / bs)]! * bs + (j % bs);
    keys.rowOf = rowOf;
    attend(qlD, n * S * H * C, qrD, n * S * H * R, S, H, C, R, keys, T, T - S, attrs.scale, out, n * S * H * C);
  }
  return [{ storage: new CpuStorage(out), shape: [N, S, H, C], dtype: ql.dtype }];
}

let registered = false;
/** Registers the CPU and WebGPU kernels (idempotent; the ops below call it themselves). */
export function registerMlaCpuKernels(): void {
  if (registered) return;
  registered = true;
  registerKernel<FlashPrefillAttrs>(FLASH_PREFILL_OP, 'cpu', flashPrefillCpu);
  registerKernel<PagedAttentionAttrs>(PAGED_ATTENTION_OP, 'cpu', pagedAttentionCpu);
  registerMlaWebGpuKernels();
}
registerMlaCpuKernels();

// ---------------------------------------------------------------------------------------------
// Composed path (any backend, differentiable)

/**
 * Latent attention from core ops: every head shares the keys, so the S·H query rows of a batch
 * element form one matrix against ckv/kr (no per-head copies). `mask` is additive and broadcasts to
 * [B, S, H, T] (e.g. [S, 1, T] or [B, S, 1, T]).
 */
export function composedLatentAttention(qLat: Tensor, qRope: Tensor, ckv: Tensor, kr: Tensor, scale: number, mask: Tensor): Tensor {
  const [B, S, H, C] = qLat.shape as [number, number, number, number];
  const R = qRope.shape[3]!;
  const T = ckv.shape[1]!;
  const q1 = reshape(qLat, [B, S * H, C]);
  const q2 = reshape(qRope, [B, S * H, R]);
  const scores = add(matmul(q1, ckv, { transB: true }), matmul(q2, kr, { transB: true })); // [B, S·H, T]
  const p = softmax(add(mul(reshape(scores, [B, S, H, T]), scale), mask), -1); // f32 or wider inside the kernels
  return reshape(matmul(reshape(p, [B, S * H, T]), ckv), [B, S, H, C]);
}

function checkDims(what: string, qLat: Tensor, qRope: Tensor): [number, number, number, number, number] {
  if (qLat.ndim !== 4) throw new Error(`${what}: qLat must be [B, S, H, kvLoraRank], got [${qLat.shape.join(', ')}]`);
  const [B, S, H, C] = qLat.shape as [number, number, number, number];
  if (qRope.ndim !== 4 || qRope.shape[0] !== B || qRope.shape[1] !== S || qRope.shape[2] !== H) {
    throw new Error(`${what}: qRope must be [${B}, ${S}, ${H}, ropeDim], got [${qRope.shape.join(', ')}]`);
  }
  if (qLat.dtype !== qRope.dtype) throw new TypeError(`${what}: qLat is ${qLat.dtype} but qRope is ${qRope.dtype}`);
  if (qLat.dtype !== 'f32' && qLat.dtype !== 'f64') throw new TypeError(`${what}: queries must be f32 or f64, got ${qLat.dtype}`);
  return [B, S, H, C, qRope.shape[3]!];
}

const needsGrad = (...ts: Tensor[]): boolean => isGradEnabled() && ts.some((t) => t.requiresGrad);

export interface LatentAttentionOptions {
  /** softmax scale (MLA.softmaxScale) */
  scale: number;
  /** query s sees keys j <= causalOffset + s; default T - S (the queries are the last S keys) */
  causalOffset?: number;
  /** 'auto' (default): the registered kernel when no gradient is needed, else composed */
  impl?: AttentionImpl;
}

/**
 * Causal attention of latent queries against contiguous latents: qLat [B,S,H,C], qRope [B,S,H,R],
 * ckv [B,T,C], kr [B,T,R] → [B,S,H,C] = softmax((qLat·ckvᵀ + qRope·krᵀ)·scale + causal) · ckv.
 */
export function latentAttention(qLat: Tensor, qRope: Tensor, ckv: Tensor, kr: Tensor, opts: LatentAttentionOptions): Tensor {
  registerMlaCpuKernels();
  const [B, S, , C, R] = checkDims('latentAttention', qLat, qRope);
  if (ckv.ndim !== 3 || ckv.shape[0] !== B || ckv.shape[2] !== C) throw new Error(`latentAttention: ckv must be [${B}, T, ${C}], got [${ckv.shape.join(', ')}]`);
  const T = ckv.shape[1]!;
  if (kr.ndim !== 3 || kr.shape[0] !== B || kr.shape[1] !== T || kr.shape[2] !== R) throw new Error(`latentAttention: kr must be [${B}, ${T}, ${R}], got [${kr.shape.join(', ')}]`);
  if (ckv.dtype !== qLat.dtype || kr.dtype !== qLat.dtype) throw new TypeError(`latentAttention: dtypes differ (queries ${qLat.dtype}, ckv ${ckv.dtype}, kr ${kr.dtype})`);
  const offset = opts.causalOffset ?? T - S;
  if (!Number.isInteger(offset) || offset < 0) throw new RangeError(`latentAttention: causalOffset must be a non-negative integer (every query must see key 0), got ${offset}`);
  if (T === 0) throw new RangeError('latentAttention: no keys');
  const be = qLat.backend;
  const impl = opts.impl ?? 'auto';
  const useKernel = impl === 'kernel' || (impl === 'auto' && hasKernel(FLASH_PREFILL_OP, be.name) && (be.name === 'cpu' || qLat.dtype === 'f32') && !needsGrad(qLat, qRope, ckv, kr));
  if (useKernel) {
    const [o] = runKernel<FlashPrefillAttrs>(FLASH_PREFILL_OP, be, [qLat, qRope, ckv, kr], { scale: opts.scale, causalOffset: offset });
    return new Tensor(be, o!.storage, o!.shape, o!.dtype);
  }
  const mask = reshape(causalMask(S, T, { offset, dtype: qLat.dtype, backend: be }), [S, 1, T]);
  return composedLatentAttention(qLat, qRope, ckv, kr, opts.scale, mask);
}

export interface PagedAttentionOptions {
  scale: number;
  impl?: AttentionImpl;
}

/**
 * Attention of the last S tokens of each sequence over its cached latents: qLat [N,S,H,C],
 * qRope [N,S,H,R] for the sequences `seqIds` (whose latents, including these S tokens, are already
 * in `cache` at `layer`) → [N,S,H,C]. Sequences may have different lengths.
 */
export function pagedLatentAttention(qLat: Tensor, qRope: Tensor, cache: PagedLatentCache, layer: number, seqIds: readonly number[], opts: PagedAttentionOptions): Tensor {
  registerMlaCpuKernels();
  const [N, S, H, C, R] = checkDims('pagedLatentAttention', qLat, qRope);
  if (C !== cache.kvLoraRank || R !== cache.ropeDim) {
    throw new Error(`pagedLatentAttention: queries are ${C} + ${R} wide but the cache holds kvLoraRank ${cache.kvLoraRank} + ropeDim ${cache.ropeDim}`);
  }
  if (seqIds.length !== N) throw new Error(`pagedLatentAttention: ${N} query rows but ${seqIds.length} sequence ids`);
  const { tables, lengths, maxBlocks } = cache.batchTables(layer, seqIds);
  lengths.forEach((len, i) => {
    if (len < S) throw new RangeError(`pagedLatentAttention: sequence ${seqIds[i]} holds ${len} tokens in layer ${layer}, fewer than the ${S} queries (append the new tokens' latents first)`);
  });
  const be = qLat.backend;
  const impl = opts.impl ?? 'auto';
  const useKernel =
    impl === 'kernel' ||
    (impl === 'auto' && hasKernel(PAGED_ATTENTION_OP, be.name) && (be.name === 'cpu' || (qLat.dtype === 'f32' && cache.dtype === 'f32')) && !needsGrad(qLat, qRope));
  if (useKernel) {
    const pool = cache.devicePool(layer, be);
    const tab = tensor(tables, { shape: [N, maxBlocks], dtype: 'i32', backend: be });
    const len = tensor(lengths, { shape: [N], dtype: 'i32', backend: be });
    // on the CPU the pool may be another float type than the queries: the kernel reads numbers either way
    const [o] = runKernel<PagedAttentionAttrs>(PAGED_ATTENTION_OP, be, [qLat, qRope, pool.ckv, pool.kr, tab, len], { scale: opts.scale, blockSize: cache.blockSize });
    return new Tensor(be, o!.storage, o!.shape, o!.dtype);
  }
  // composed: gather each sequence's latents on the host, pad to the longest, mask the padding
  const Tmax = Math.max(...lengths);
  const dtype = qLat.dtype;
  const arr = (n: number): F => (dtype === 'f64' ? new Float64Array(n) : new Float32Array(n));
  const ckv = arr(N * Tmax * C);
  const kr = arr(N * Tmax * R);
  const mask = arr(N * S * Tmax);
  for (let n = 0; n < N; n++) {
    const rows = cache.read(layer, seqIds[n]!);
    ckv.set(rows.ckv, n * Tmax * C);
    kr.set(rows.kr, n * Tmax * R);
    const T = lengths[n]!;
    for (let s = 0; s < S; s++) for (let j = 0; j < Tmax; j++) mask[(n * S + s) * Tmax + j] = j < T && j <= T - S + s ? 0 : -Infinity;
  }
  return composedLatentAttention(
    qLat,
    qRope,
    tensor(ckv, { shape: [N, Tmax, C], dtype, backend: be }),
    tensor(kr, { shape: [N, Tmax, R], dtype, backend: be }),
    opts.scale,
    tensor(mask, { shape: [N, S, 1, Tmax], dtype, backend: be }),
  );
}
