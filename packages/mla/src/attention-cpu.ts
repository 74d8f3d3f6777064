// CPU kernels of the two latent-attention ops: the inner loops (one sequence's S x H query rows
// against its T latent rows, tiled with an online softmax, accumulating in float64) and the kernels
// that walk the batch. f32 inputs take core's latentAttention instead: the same tiled softmax with the
// products on the SIMD GEMM, every sequence's query blocks spread over the GEMM threads as one job.
import {
  CpuBackend,
  CpuStorage,
  latentAttention,
  type Backend,
  type KernelTensor,
  type LatentSequence,
} from '@dsv3/core';
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

// ---------------------------------------------------------------------------------------------
// CPU kernels (registered under core's registry)

const data = (t: KernelTensor): F => {
  const d = (t.storage as CpuStorage).data;
  if (!(d instanceof Float32Array || d instanceof Float64Array))
    throw new TypeError(`MLA kernels need f32 or f64 tensors, got ${t.dtype}`);
  return d;
};

const outArray = (dtype: string, n: number): F => (dtype === 'f64' ? new Float64Array(n) : new Float32Array(n));

/**
 * Fewest floats of a prefill's queries or attention output kept in the GEMM engine's memory (where the
 * attention job reads and writes them in place): a decode step's few rows cost less to stage than a
 * block allocated and released per call.
 */
export const RESIDENT_MIN_FLOATS = 65536;

interface Queries {
  qL: F;
  qR: F;
  S: number;
  H: number;
  C: number;
  R: number;
  scale: number;
}

const isF32 = (a: F): a is Float32Array => a instanceof Float32Array;

/** Every sequence's attention into out [N, S, H, C]: as one core job when every operand is f32. */
function attendAll(q: Queries, kv: F, kr: F, seqs: LatentSequence[], out: F): void {
  const { qL, qR, S, H, C, R, scale } = q;
  if (
    isF32(qL) &&
    isF32(qR) &&
    isF32(kv) &&
    isF32(kr) &&
    isF32(out) &&
    latentAttention({ S, H, C, R, scale, qL, qR, kv, kr, seqs, out })
  )
    return;
  seqs.forEach(({ T, offset, rowOf, base }, n) =>
    attendSequence({
      qL,
      qLo: n * S * H * C,
      qR,
      qRo: n * S * H * R,
      S,
      H,
      C,
      R,
      keys: { kv, kr, rowOf, base },
      T,
      offset,
      scale,
      out,
      outO: n * S * H * C,
    }),
  );
}

/** inputs [qLat [B,S,H,C], qRope [B,S,H,R], ckv [B,T,C], kr [B,T,R]] → [out [B,S,H,C]] */
export function flashPrefillCpu(_b: Backend, inputs: KernelTensor[], attrs: FlashPrefillAttrs): KernelTensor[] {
  const [ql, qr, kv, kr] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  const [B, S, H, C] = ql.shape as [number, number, number, number];
  const R = qr.shape[3]!;
  const T = kv.shape[1]!;
  const out = outArray(ql.dtype, B * S * H * C);
  const seqs = Array.from({ length: B }, (_, b) => ({ T, offset: attrs.causalOffset, rowOf: null, base: b * T }));
  attendAll({ qL: data(ql), qR: data(qr), S, H, C, R, scale: attrs.scale }, data(kv), data(kr), seqs, out);
  return [{ storage: new CpuStorage(out), shape: [B, S, H, C], dtype: ql.dtype }];
}

/** Pool rows of every sequence's keys, kept from call to call (grown, never shrunk; not re-entrant). */
let keptRows = new Int32Array(0);

/**
 * inputs [qLat [N,S,H,C], qRope [N,S,H,R], poolKv [nb,bs,C], poolKr [nb,bs,R], tables i32 [N,maxB],
 * lengths i32 [N]] → [out [N,S,H,C]]. Sequence n holds lengths[n] tokens, the last S of which are the
 * queries: query s sees keys j <= lengths[n] - S + s.
 */
export function pagedAttentionCpu(b: Backend, inputs: KernelTensor[], attrs: PagedAttentionAttrs): KernelTensor[] {
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
  // f32: in the GEMM engine's memory where it has room, so the attention job writes it in place and the
  // absorbed output product reads it there (MLA disposes it after that product); not zero-filled: the
  // attention writes every row
  const storage =
    ql.dtype === 'f32' && b instanceof CpuBackend && N * S * H * C >= RESIDENT_MIN_FLOATS
      ? b.allocResident('f32', N * S * H * C, false)
      : new CpuStorage(outArray(ql.dtype, N * S * H * C));
  const out = storage.data as F;
  const total = lengths.subarray(0, N).reduce((t, T) => t + T, 0);
  if (keptRows.length < total) keptRows = new Int32Array(total);
  let at = 0;
  const seqs: LatentSequence[] = Array.from({ length: N }, (_, n) => {
    const T = lengths[n]!;
    const rowOf = keptRows.subarray(at, at + T);
    at += T;
    for (let j = 0; j < T; j++) rowOf[j] = tables[n * maxB + Math.floor(j / bs)]! * bs + (j % bs);
    return { T, offset: T - S, rowOf, base: 0 };
  });
  attendAll({ qL: data(ql), qR: data(qr), S, H, C, R, scale: attrs.scale }, data(pkv), data(pkr), seqs, out);
  return [{ storage, shape: [N, S, H, C], dtype: ql.dtype }];
}
