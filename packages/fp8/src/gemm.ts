// Block-scaled FP8 GEMM, NT layout, as DeepSeek's `fp8_gemm` / DeepGEMM:
//
//   a  [M, K]  E4M3 bytes, aScale [M, ceil(K/128)]               (1 x 128 activation tiles)
//   b  [N, K]  E4M3 bytes, bScale [ceil(N/128), ceil(K/128)]     (128 x 128 weight tiles)
//              or, with bScaleLayout 'row', bScale [N, ceil(K/128)] (1 x 128 tiles, as a)
//   C[m, n] = Σ_kb  aScale[m, kb] * bScale[n/128, kb] * Σ_{k in kb} qa[m, k] * qb[n, k]
//
// The inner sum over one 128-wide K block is what the tensor cores compute; its result is
// "promoted": scaled by the two block scales and added into the output accumulator.
//
// ARITHMETIC. Within a K block the decoded values are multiplied and summed in f64. For E4M3 that
// sum is exact: a product of two E4M3 values has at most 8 significant bits and lies in
// [2^-18, 448^2 < 2^18], so a sum of 128 of them spans < 2^25 / 2^-18 — 43 bits, well within a
// double's 53. The promotion (partial * aScale * bScale, added to the accumulator) is done in f64 as
// well, and C is rounded to f32 once at the end: the result is within an f32 rounding of the exact
// product of the dequantized operands (the kernel accumulates in f32, which is coarser). To study
// the tensor cores' limited accumulation precision instead, pass `accumulator` (see accum.ts).
//
// K NOT A MULTIPLE OF 128. DeepSeek's kernels require K % 128 == 0 (and DeepGEMM N % 64 / alignment);
// here, consistently with the quantizers, the last K block may be shorter (its scales still occupy a
// full column of aScale/bScale) and M, N are arbitrary. N's blocks of 128 rows may be ragged too.
//
// SPECIAL VALUES. NaN bytes (0x7f/0xff) decode to NaN and propagate to every output they touch (a
// whole row of C for a NaN in a, a whole column for a NaN in b) — fp8GemmBlockScaled does not scan for
// them. Scales must be finite (zero and negative scales are accepted): a non-finite scale throws.
//
// SEAM FOR A FASTER INNER PRODUCT. Each K block is decoded once to packed f32 slabs
// (A: [M, kLen], B: [N, kLen], row-major); `opts.slabGemm` may replace the built-in JS kernel for
// the slab product P = A_slab · B_slab^T (e.g. core's WASM sgemm). The scale-and-accumulate step
// stays here.
import { decodeTable } from './codec/index';
import type { Fp8Format } from './codec/common';
import { fp8GemmEmulated } from './accum';
import type { AccumulatorOptions } from './accum';

/**
 * Computes c[m*n] = a[m*k] · b[n*k]^T for row-major f32 slabs (c is overwritten). An implementation
 * may round the sum to f32 (sgemm), or keep more precision.
 */
export type SlabGemm = (m: number, n: number, k: number, a: Float32Array, b: Float32Array, c: Float32Array) => void;

export type BScaleLayout = 'block' | 'row';

export interface Fp8GemmOptions {
  /** Block size of the scales along K (and along N for bScale). Default 128. */
  block?: number;
  /** Byte format of a / b. Default 'e4m3'. (With E5M2 the in-block f64 sum is no longer exact.) */
  aFormat?: Fp8Format;
  bFormat?: Fp8Format;
  /**
   * Granularity of bScale: 'block' (default) — [ceil(N/block), ceil(K/block)], one scale per
   * block x block tile of b (weights); 'row' — [N, ceil(K/block)], one scale per 1 x block tile of b
   * (an activation-like operand, e.g. the 128x1-quantized X^T of the Wgrad GEMM; DeepGEMM's "1D1D"
   * scaling).
   */
  bScaleLayout?: BScaleLayout;
  /** Output buffer [M, N] (overwritten). */
  out?: Float32Array;
  /** Replaces the built-in JS slab kernel (see the SEAM note above). */
  slabGemm?: SlabGemm;
  /** Emulates a limited-precision tensor-core accumulator (slow; for studies). */
  accumulator?: AccumulatorOptions;
  /**
   * Dequantize first: decode and scale both operands to f32 (a * aScale, b * bScale), then run ONE
   * GEMM over the whole K (through `slabGemm` when given, else the JS kernel). The scales are
   * applied to the operands instead of to each block's sum — equal in exact arithmetic; in f32 the
   * scaled operands are rounded (<= 2^-24 relative each) and, with an f32 slabGemm, so is the
   * K-long sum: about 1e-7 relative in all. Costs 4 bytes per operand element of memory; with a fast
   * f32 GEMM it runs at that GEMM's speed (no per-block pass over C).
   */
  dequantizeFirst?: boolean;
}

/** Checks operand sizes and scales; returns the number of K blocks. */
export function validateGemmOperands(
  a: Uint8Array,
  aScale: Float32Array,
  b: Uint8Array,
  bScale: Float32Array,
  m: number,
  n: number,
  k: number,
  block: number,
  bScaleLayout: BScaleLayout = 'block',
): { kBlocks: number; nBlocks: number } {
  for (const [name, v] of [
    ['m', m],
    ['n', n],
    ['k', k],
  ] as const) {
    if (!Number.isInteger(v) || v < 0)
      throw new RangeError(`fp8GemmBlockScaled: ${name} must be a non-negative integer, got ${v}`);
  }
  if (!Number.isInteger(block) || block < 1)
    throw new RangeError(`fp8GemmBlockScaled: block must be a positive integer, got ${block}`);
  if (!(a instanceof Uint8Array)) throw new TypeError('fp8GemmBlockScaled: a must be a Uint8Array of FP8 bytes');
  if (!(b instanceof Uint8Array)) throw new TypeError('fp8GemmBlockScaled: b must be a Uint8Array of FP8 bytes');
  if (!(aScale instanceof Float32Array)) throw new TypeError('fp8GemmBlockScaled: aScale must be a Float32Array');
  if (!(bScale instanceof Float32Array)) throw new TypeError('fp8GemmBlockScaled: bScale must be a Float32Array');
  if (bScaleLayout !== 'block' && bScaleLayout !== 'row') {
    throw new RangeError(
      `fp8GemmBlockScaled: bScaleLayout must be 'block' or 'row', got ${JSON.stringify(bScaleLayout)}`,
    );
  }
  const kBlocks = Math.ceil(k / block);
  // rows of bScale: one per block of b rows, or one per b row
  const nBlocks = bScaleLayout === 'row' ? n : Math.ceil(n / block);
  if (a.length !== m * k)
    throw new RangeError(`fp8GemmBlockScaled: a has ${a.length} bytes, expected M*K = ${m}*${k} = ${m * k}`);
  if (b.length !== n * k)
    throw new RangeError(`fp8GemmBlockScaled: b has ${b.length} bytes, expected N*K = ${n}*${k} = ${n * k}`);
  if (aScale.length !== m * kBlocks) {
    throw new RangeError(
      `fp8GemmBlockScaled: aScale has ${aScale.length} scales, expected [M, ceil(K/${block})] = [${m}, ${kBlocks}] = ${m * kBlocks}`,
    );
  }
  if (bScale.length !== nBlocks * kBlocks) {
    const rowsDesc = bScaleLayout === 'row' ? 'N' : `ceil(N/${block})`;
    throw new RangeError(
      `fp8GemmBlockScaled: bScale has ${bScale.length} scales, expected [${rowsDesc}, ceil(K/${block})] = [${nBlocks}, ${kBlocks}] = ${nBlocks * kBlocks} (bScaleLayout '${bScaleLayout}')`,
    );
  }
  for (const [name, s] of [
    ['aScale', aScale],
    ['bScale', bScale],
  ] as const) {
    for (let i = 0; i < s.length; i++) {
      if (!Number.isFinite(s[i]!)) throw new RangeError(`fp8GemmBlockScaled: ${name}[${i}] = ${s[i]} is not finite`);
    }
  }
  return { kBlocks, nBlocks };
}

/** Decodes columns [k0, k0+len) of a row-major [rows, k] byte matrix into a packed [rows, len] f32 slab. */
export function decodeSlab(
  src: Uint8Array,
  rows: number,
  k: number,
  k0: number,
  len: number,
  lut: Float32Array,
  dst: Float32Array,
): void {
  for (let r = 0; r < rows; r++) {
    const s = r * k + k0;
    const d = r * len;
    for (let j = 0; j < len; j++) dst[d + j] = lut[src[s + j]!]!;
  }
}

/**
 * Block-scaled FP8 GEMM, NT: returns C [M, N] (f32) = dequant(a) · dequant(b)^T with DeepSeek's
 * per-128-block promotion. See the file comment for layouts, precision and special values.
 */
export function fp8GemmBlockScaled(
  a: Uint8Array,
  aScale: Float32Array,
  b: Uint8Array,
  bScale: Float32Array,
  m: number,
  n: number,
  k: number,
  opts: Fp8GemmOptions = {},
): Float32Array {
  const block = opts.block ?? 128;
  const bRow = (opts.bScaleLayout ?? 'block') === 'row';
  const { kBlocks, nBlocks } = validateGemmOperands(a, aScale, b, bScale, m, n, k, block, opts.bScaleLayout ?? 'block');
  // rows of b that share one bScale row
  const bGroup = bRow ? 1 : block;
  const out = opts.out ?? new Float32Array(m * n);
  if (!(out instanceof Float32Array) || out.length !== m * n) {
    throw new RangeError(`fp8GemmBlockScaled: out must be a Float32Array of M*N = ${m * n} elements`);
  }
  const lutA = decodeTable(opts.aFormat ?? 'e4m3');
  const lutB = decodeTable(opts.bFormat ?? 'e4m3');
  if (opts.accumulator) {
    fp8GemmEmulated(a, aScale, b, bScale, m, n, k, { block, bGroup, lutA, lutB, out, accumulator: opts.accumulator });
    return out;
  }
  if (m === 0 || n === 0) return out;
  if (opts.dequantizeFirst) {
    // Validates again: a scan of the scales, negligible next to the GEMM.
    const { ad, bd } = dequantizeGemmOperands(a, aScale, b, bScale, m, n, k, opts);
    (opts.slabGemm ?? gemmF32NT)(m, n, k, ad, bd, out);
    return out;
  }

  const acc = new Float64Array(m * n);
  const kb0 = Math.min(block, k);
  const aSlab = new Float32Array(m * kb0);
  const bSlab = new Float32Array(n * kb0);
  const sa = new Float64Array(m);
  const sbRow = new Float64Array(n); // bScale of each output column for the current K block
  const partial = opts.slabGemm ? new Float32Array(m * n) : null;

  for (let kb = 0; kb < kBlocks; kb++) {
    const k0 = kb * block;
    const len = Math.min(block, k - k0);
    decodeSlab(a, m, k, k0, len, lutA, aSlab);
    decodeSlab(b, n, k, k0, len, lutB, bSlab);
    for (let i = 0; i < m; i++) sa[i] = aScale[i * kBlocks + kb]!;
    for (let nb = 0; nb < nBlocks; nb++) {
      const s = bScale[nb * kBlocks + kb]!;
      sbRow.fill(s, nb * bGroup, Math.min(n, (nb + 1) * bGroup));
    }
    if (partial && opts.slabGemm) {
      opts.slabGemm(m, n, len, aSlab, bSlab, partial);
      for (let i = 0; i < m; i++) {
        const si = sa[i]!;
        const row = i * n;
        for (let j = 0; j < n; j++) acc[row + j] = acc[row + j]! + partial[row + j]! * si * sbRow[j]!;
      }
    } else {
      slabKernelScaleAcc(m, n, len, aSlab, bSlab, sa, sbRow, acc);
    }
  }
  for (let i = 0; i < m * n; i++) out[i] = acc[i]!;
  return out;
}

/**
 * Decodes a row-major [rows, k] FP8 matrix to f32 with its scales folded in:
 * out[r, t] = decode(q[r, t]) * scale[r / group, t / block] (rounded to f32; exact when the scales
 * are powers of two). `group` = 1 for per-row (1 x block) scales, `block` for block x block tiles.
 */
export function scaleRows(
  q: Uint8Array,
  scale: Float32Array,
  rows: number,
  k: number,
  block: number,
  group: number,
  kBlocks: number,
  lut: Float32Array,
  out: Float32Array = new Float32Array(rows * k),
): Float32Array {
  for (let r = 0; r < rows; r++) {
    const srow = ((r / group) | 0) * kBlocks;
    const base = r * k;
    for (let kb = 0; kb < kBlocks; kb++) {
      const s = scale[srow + kb]!;
      const t1 = Math.min(base + (kb + 1) * block, base + k);
      for (let t = base + kb * block; t < t1; t++) out[t] = lut[q[t]!]! * s;
    }
  }
  return out;
}

/**
 * Validates the operands and decodes both to f32 with the block scales folded in (the
 * `dequantizeFirst` operands): returns ad [M, K] and bd [N, K] with C = ad · bd^T.
 */
export function dequantizeGemmOperands(
  a: Uint8Array,
  aScale: Float32Array,
  b: Uint8Array,
  bScale: Float32Array,
  m: number,
  n: number,
  k: number,
  opts: Pick<Fp8GemmOptions, 'block' | 'bScaleLayout' | 'aFormat' | 'bFormat'> = {},
): { ad: Float32Array; bd: Float32Array } {
  const block = opts.block ?? 128;
  const layout = opts.bScaleLayout ?? 'block';
  const { kBlocks } = validateGemmOperands(a, aScale, b, bScale, m, n, k, block, layout);
  const ad = scaleRows(a, aScale, m, k, block, 1, kBlocks, decodeTable(opts.aFormat ?? 'e4m3'));
  const bd = scaleRows(
    b,
    bScale,
    n,
    k,
    block,
    layout === 'row' ? 1 : block,
    kBlocks,
    decodeTable(opts.bFormat ?? 'e4m3'),
  );
  return { ad, bd };
}

/** Rows of B kept hot while a panel of A streams past (64 rows x 128 x 4 B = 32 KiB). */
const N_PANEL = 64;

/**
 * acc[i, j] += sa[i] * sb[j] * Σ_t a[i, t] * b[j, t] for packed slabs a [m, len], b [n, len].
 * 4 x 2 register tile, f64 arithmetic; loops blocked so a panel of B stays in cache.
 */
export function slabKernelScaleAcc(
  m: number,
  n: number,
  len: number,
  a: Float32Array,
  b: Float32Array,
  sa: Float64Array,
  sb: Float64Array,
  acc: Float64Array,
): void {
  const m4 = m - (m % 4);
  const n2 = n - (n % 2);
  for (let j0 = 0; j0 < n; j0 += N_PANEL) {
    const j1 = Math.min(j0 + N_PANEL, n);
    const j1e = Math.min(j1, n2);
    let i = 0;
    for (; i < m4; i += 4) {
      const a0 = i * len;
      const a1 = a0 + len;
      const a2 = a1 + len;
      const a3 = a2 + len;
      let j = j0;
      for (; j < j1e; j += 2) {
        const b0 = j * len;
        const b1 = b0 + len;
        let c00 = 0,
          c01 = 0,
          c10 = 0,
          c11 = 0,
          c20 = 0,
          c21 = 0,
          c30 = 0,
          c31 = 0;
        for (let t = 0; t < len; t++) {
          const x0 = b[b0 + t]!;
          const x1 = b[b1 + t]!;
          const y0 = a[a0 + t]!;
          const y1 = a[a1 + t]!;
          const y2 = a[a2 + t]!;
          const y3 = a[a3 + t]!;
          c00 += y0 * x0;
          c01 += y0 * x1;
          c10 += y1 * x0;
          c11 += y1 * x1;
          c20 += y2 * x0;
          c21 += y2 * x1;
          c30 += y3 * x0;
          c31 += y3 * x1;
        }
        const s0 = sb[j]!;
        const s1 = sb[j + 1]!;
        const r0 = i * n + j;
        const r1 = r0 + n;
        const r2 = r1 + n;
        const r3 = r2 + n;
        const u0 = sa[i]!;
        const u1 = sa[i + 1]!;
        const u2 = sa[i + 2]!;
        const u3 = sa[i + 3]!;
        acc[r0] = acc[r0]! + c00 * u0 * s0;
        acc[r0 + 1] = acc[r0 + 1]! + c01 * u0 * s1;
        acc[r1] = acc[r1]! + c10 * u1 * s0;
        acc[r1 + 1] = acc[r1 + 1]! + c11 * u1 * s1;
        acc[r2] = acc[r2]! + c20 * u2 * s0;
        acc[r2 + 1] = acc[r2 + 1]! + c21 * u2 * s1;
        acc[r3] = acc[r3]! + c30 * u3 * s0;
        acc[r3 + 1] = acc[r3 + 1]! + c31 * u3 * s1;
      }
      for (; j < j1; j++) {
        for (let d = 0; d < 4; d++)
          acc[(i + d) * n + j] = acc[(i + d) * n + j]! + dot(a, (i + d) * len, b, j * len, len) * sa[i + d]! * sb[j]!;
      }
    }
    for (; i < m; i++) {
      for (let j = j0; j < j1; j++)
        acc[i * n + j] = acc[i * n + j]! + dot(a, i * len, b, j * len, len) * sa[i]! * sb[j]!;
    }
  }
}

function dot(a: Float32Array, ao: number, b: Float32Array, bo: number, len: number): number {
  let s = 0;
  for (let t = 0; t < len; t++) s += a[ao + t]! * b[bo + t]!;
  return s;
}

/**
 * A plain f32 GEMM, NT (c[m, n] = a[m, k] · b[n, k]^T, f64 accumulation, f32 output), with the same
 * 4 x 2 register tiling: the JS baseline the benchmark compares against, and a SlabGemm.
 */
export function gemmF32NT(m: number, n: number, k: number, a: Float32Array, b: Float32Array, c: Float32Array): void {
  const KC = 256;
  const acc = new Float64Array(m * n);
  const ones = new Float64Array(Math.max(m, n)).fill(1);
  const aP = new Float32Array(m * Math.min(KC, k));
  const bP = new Float32Array(n * Math.min(KC, k));
  for (let k0 = 0; k0 < k; k0 += KC) {
    const len = Math.min(KC, k - k0);
    for (let r = 0; r < m; r++) aP.set(a.subarray(r * k + k0, r * k + k0 + len), r * len);
    for (let r = 0; r < n; r++) bP.set(b.subarray(r * k + k0, r * k + k0 + len), r * len);
    slabKernelScaleAcc(m, n, len, aP, bP, ones, ones, acc);
  }
  for (let i = 0; i < m * n; i++) c[i] = acc[i]!;
}
