// The f32 latent-attention kernel as it was before core's latentAttention job (kept here verbatim in
// its arithmetic, as the reference the job must match bit for bit): one sequence at a time on the
// calling thread, each 512-key tile's two score products and P·V through core's CPU 'matmul' kernel
// (itself threaded), masking and the online softmax in JS, accumulating in float64.
import { cpu, CpuStorage, runKernel, type KernelTensor } from '@dsv3/core';

export interface SerialSequence {
  T: number;
  offset: number;
  /** pool row of key j, or null: row = base + j */
  rowOf: Int32Array | null;
  base: number;
}

const GEMM_TILE_K = 512;
const GEMM_TILE_ROWS = 256;

// Work arrays kept from call to call, as the replaced kernel kept them (grown, never shrunk).
const kept = { f64: [] as Float64Array[], f32: [] as Float32Array[] };
const keptF64 = (slot: number, n: number): Float64Array =>
  (kept.f64[slot] = (kept.f64[slot]?.length ?? -1) < n ? new Float64Array(n) : kept.f64[slot]!);
const keptF32 = (slot: number, n: number): Float32Array =>
  (kept.f32[slot] = (kept.f32[slot]?.length ?? -1) < n ? new Float32Array(n) : kept.f32[slot]!);

const f32 = (shape: number[], a: Float32Array): KernelTensor => ({ storage: new CpuStorage(a), shape, dtype: 'f32' });

function mm(a: KernelTensor, b: KernelTensor, transB: boolean): Float32Array {
  const [o] = runKernel<{ transA: boolean; transB: boolean }>('matmul', cpu, [a, b], { transA: false, transB });
  return (o!.storage as CpuStorage).data as Float32Array;
}

/** out [N, S, H, C] of queries [N, S, H, C] / [N, S, H, R] against key rows kv [., C] / kr [., R]. */
export function serialGemmAttention(
  qL: Float32Array,
  qR: Float32Array,
  kv: Float32Array,
  kr: Float32Array,
  seqs: SerialSequence[],
  d: { S: number; H: number; C: number; R: number; scale: number },
): Float32Array {
  const { S, H, C, R, scale } = d;
  const out = new Float32Array(seqs.length * S * H * C);
  const tq = Math.max(1, Math.floor(GEMM_TILE_ROWS / H));
  const maxRows = Math.min(tq, S) * H;
  const m = keptF64(0, maxRows);
  const l = keptF64(1, maxRows);
  const acc = keptF64(2, maxRows * C);
  const qc = keptF32(0, maxRows * C);
  const qrr = keptF32(1, maxRows * R);
  const p = keptF32(2, maxRows * GEMM_TILE_K);
  const vt = keptF32(3, GEMM_TILE_K * C);
  const krt = keptF32(4, GEMM_TILE_K * R);
  seqs.forEach(({ T, offset, rowOf, base }, seq) => {
    const qLo = seq * S * H * C,
      qRo = seq * S * H * R,
      outO = seq * S * H * C;
    for (let s0 = 0; s0 < S; s0 += tq) {
      const s1 = Math.min(S, s0 + tq);
      const rows = (s1 - s0) * H;
      for (let i = 0; i < rows * C; i++) qc[i] = qL[qLo + s0 * H * C + i]! * scale;
      for (let i = 0; i < rows * R; i++) qrr[i] = qR[qRo + s0 * H * R + i]! * scale;
      const qcT = f32([rows, C], qc.subarray(0, rows * C));
      const qrT = f32([rows, R], qrr.subarray(0, rows * R));
      m.fill(-Infinity, 0, rows);
      l.fill(0, 0, rows);
      acc.fill(0, 0, rows * C);
      const kEnd = Math.min(T, offset + s1);
      for (let k0 = 0; k0 < kEnd; k0 += GEMM_TILE_K) {
        const n = Math.min(GEMM_TILE_K, kEnd - k0);
        const vTile = vt.subarray(0, n * C);
        const rTile = krt.subarray(0, n * R);
        for (let t = 0; t < n; t++) {
          const row = rowOf ? rowOf[k0 + t]! : base + k0 + t;
          vTile.set(kv.subarray(row * C, (row + 1) * C), t * C);
          rTile.set(kr.subarray(row * R, (row + 1) * R), t * R);
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
  });
  return out;
}
