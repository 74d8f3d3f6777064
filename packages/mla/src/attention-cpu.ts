// CPU kernels of the two latent-attention ops: the inner loops (one sequence's S x H query rows
// against its T latent rows, tiled with an online softmax, accumulating in float64) and the kernels
// that walk the batch. f32 inputs take the GEMM path (core's CPU 'matmul' kernel per tile).
import { cpu, CpuStorage, F32WorkArrays, runKernel, type Backend, type KernelTensor } from '@dsv3/core';
import type { FlashPrefillAttrs, PagedAttentionAttrs } from './attention-attrs.js';

type F = Float32Array | Float64Array;

// ---------------------------------------------------------------------------------------------
// The CPU inner loop: one sequence's S x H query rows against T latent rows.

/** One sequence's attention: its queries (at offsets in the batch's arrays), keys and output. */
interface SequenceJob {
  /** latent queries [S, H, C] from qLo, rotary queries [S, H, R] from qRo */
  qL: F;
  qLo: number;
  qR: F;
  qRo: number;
  S: number;
  H: number;
  C: number;
  R: number;
  keys: Keys;
  /** visible key count */
  T: number;
  /** query s sees keys j <= offset + s */
  offset: number;
  scale: number;
  /** output [S, H, C] from outO */
  out: F;
  outO: number;
}

interface Keys {
  kv: F;
  kr: F;
  /** pool row of key j (paged), or null: row = base + j (contiguous) */
  rowOf: Int32Array | null;
  base: number;
}

const TILE_K = 64;
const TILE_ROWS = 64;

function attendSequence(job: SequenceJob): void {
  const { qL, qLo, qR, qRo, S, H, C, R, keys, T, offset, scale, out, outO } = job;
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

// Work arrays kept from call to call (grown, never shrunk): a decode step runs this once per layer,
// and fresh arrays (the gathered key tile alone is 512 KiB at d_c = 256) cost their zeroing and, past
// the allocator's mmap threshold, page faults every time. Every use writes what it later reads.
// Not re-entrant, and nothing here keeps a view past its call.
const kept = { f64: [] as Float64Array[], f32: new F32WorkArrays(), i32: new Int32Array(0) };

/** Kept work array `slot` of at least n float64s. */
function keptF64(slot: number, n: number): Float64Array {
  if ((kept.f64[slot]?.length ?? -1) < n) kept.f64[slot] = new Float64Array(n);
  return kept.f64[slot]!;
}

/** Kept work array `slot` of exactly n float32s (a view: it becomes an operand of a matmul). */
const keptF32 = (slot: number, n: number): Float32Array => kept.f32.take(slot, n);

function f32(shape: number[], a: Float32Array): KernelTensor {
  return { storage: new CpuStorage(a), shape, dtype: 'f32' };
}

function mm(a: KernelTensor, b: KernelTensor, transB: boolean): Float32Array {
  const [o] = runKernel<{ transA: boolean; transB: boolean }>('matmul', cpu, [a, b], { transA: false, transB });
  return (o!.storage as CpuStorage).data as Float32Array;
}

/** attendSequence with every operand f32 (the caller checked). */
function attendSequenceGemm(job: SequenceJob): void {
  const { qLo, qRo, S, H, C, R, T, offset, scale, out, outO } = job;
  const qL = job.qL as Float32Array;
  const qR = job.qR as Float32Array;
  const kv = job.keys.kv as Float32Array;
  const kr = job.keys.kr as Float32Array;
  const { rowOf, base } = job.keys;
  const tq = Math.max(1, Math.floor(GEMM_TILE_ROWS / H));
  const maxRows = Math.min(tq, S) * H;
  const m = keptF64(0, maxRows);
  const l = keptF64(1, maxRows);
  const acc = keptF64(2, maxRows * C);
  const vt = rowOf ? keptF32(0, GEMM_TILE_K * C) : null;
  const krt = rowOf ? keptF32(1, GEMM_TILE_K * R) : null;
  for (let s0 = 0; s0 < S; s0 += tq) {
    const s1 = Math.min(S, s0 + tq);
    const rows = (s1 - s0) * H;
    const qc = keptF32(2, rows * C);
    const qrr = keptF32(3, rows * R);
    for (let i = 0; i < rows * C; i++) qc[i] = qL[qLo + s0 * H * C + i]! * scale;
    for (let i = 0; i < rows * R; i++) qrr[i] = qR[qRo + s0 * H * R + i]! * scale;
    const qcT = f32([rows, C], qc);
    const qrT = f32([rows, R], qrr);
    m.fill(-Infinity, 0, rows);
    l.fill(0, 0, rows);
    acc.fill(0, 0, rows * C);
    const kEnd = Math.min(T, offset + s1);
    const p = keptF32(4, rows * GEMM_TILE_K);
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

function attend(job: SequenceJob): void {
  const { kv, kr } = job.keys;
  if (
    job.qL instanceof Float32Array &&
    job.qR instanceof Float32Array &&
    kv instanceof Float32Array &&
    kr instanceof Float32Array
  ) {
    attendSequenceGemm(job);
  } else {
    attendSequence(job);
  }
}

// ---------------------------------------------------------------------------------------------
// CPU kernels (registered under core's registry)

const data = (t: KernelTensor): F => {
  const d = (t.storage as CpuStorage).data;
  if (!(d instanceof Float32Array || d instanceof Float64Array))
    throw new TypeError(`MLA kernels need f32 or f64 tensors, got ${t.dtype}`);
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
    attend({
      qL: qlD,
      qLo: b * S * H * C,
      qR: qrD,
      qRo: b * S * H * R,
      S,
      H,
      C,
      R,
      keys,
      T,
      offset: attrs.causalOffset,
      scale: attrs.scale,
      out,
      outO: b * S * H * C,
    });
  }
  return [{ storage: new CpuStorage(out), shape: [B, S, H, C], dtype: ql.dtype }];
}

/**
 * inputs [qLat [N,S,H,C], qRope [N,S,H,R], poolKv [nb,bs,C], poolKr [nb,bs,R], tables i32 [N,maxB],
 * lengths i32 [N]] → [out [N,S,H,C]]. Sequence n holds lengths[n] tokens, the last S of which are the
 * queries: query s sees keys j <= lengths[n] - S + s.
 */
export function pagedAttentionCpu(_b: Backend, inputs: KernelTensor[], attrs: PagedAttentionAttrs): KernelTensor[] {
  const [ql, qr, pkv, pkr, tab, len] = inputs as [
    KernelTensor,
    KernelTensor,
    KernelTensor,
    KernelTensor,
    KernelTensor,
    KernelTensor,
  ];
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
    if (kept.i32.length < T) kept.i32 = new Int32Array(T);
    const rowOf = kept.i32;
    for (let j = 0; j < T; j++) rowOf[j] = tables[n * maxB + Math.floor(j / bs)]! * bs + (j % bs);
    keys.rowOf = rowOf;
    attend({
      qL: qlD,
      qLo: n * S * H * C,
      qR: qrD,
      qRo: n * S * H * R,
      S,
      H,
      C,
      R,
      keys,
      T,
      offset: T - S,
      scale: attrs.scale,
      out,
      outO: n * S * H * C,
    });
  }
  return [{ storage: new CpuStorage(out), shape: [N, S, H, C], dtype: ql.dtype }];
}
