// The tiled FP8 GEMM's WGSL (NT, C[M, N] = Σ_kb sa[m, kb] · sb[n, kb] · Σ_{k in kb} qa[m, k] qb[n, k]).
// output tile per workgroup of 16 x 16 threads, 4 x 4 outputs per thread. For each 128-wide K block
// the FP8 tiles (BK = 16 or 32 bytes of K at a time, u32 loads when K % 4 == 0) are decoded into
// workgroup memory — f32 by default, or f16 on request where the device has shader-f16 (E4M3 values
// are exact in f16; halves the workgroup memory; products are still formed and summed in f32) — and
// multiplied into a per-block f32 partial, which is then promoted: acc += partial * (sa * sb), in
// f32, the scheme of DeepGEMM with N_C = 128. Any M, N, K (ragged edges zero-filled), bScale per
// 128x128 block or per row. 128 x 128 tiles (8 x 8 per thread) for large outputs, 64 x 64 otherwise.
import type { DType } from '@dsv3/core';
import { bindingDecls, paramsDecl, segmentTileWgsl, type BindingDecl } from '@dsv3/core';
import { FP8_LIB, decodeFn } from './wgsl';

export interface GemmTile {
  /** threads along N (x) and M (y) */
  wgx: number;
  wgy: number;
  /** outputs per thread along M and N */
  tm: number;
  tn: number;
  /** K bytes staged per step (a multiple of 4) */
  bk: number;
}

/** 128 x 128 output tiles, 8 x 8 per thread: large problems. */
export const GEMM_TILE_LARGE: GemmTile = { wgx: 16, wgy: 16, tm: 8, tn: 8, bk: 16 };
/** 64 x 64 output tiles, 4 x 4 per thread: small or thin problems. */
export const GEMM_TILE_SMALL: GemmTile = { wgx: 16, wgy: 16, tm: 4, tn: 4, bk: 32 };

export function chooseGemmTile(m: number, n: number): GemmTile {
  return m >= 128 && n >= 128 && Math.ceil(m / 128) * Math.ceil(n / 128) >= 8 ? GEMM_TILE_LARGE : GEMM_TILE_SMALL;
}

export interface GemmVariant {
  tile: GemmTile;
  /** u32 loads of 4 K-bytes at once (K % 4 == 0 and block % 4 == 0) */
  words: boolean;
  /** decoded tiles in f16 workgroup memory (shader-f16) */
  f16: boolean;
  aType: DType;
  bType: DType;
  /**
   * Grouped over expert segments (the MoE's routed experts): the rows of A are sorted by expert, an
   * i32 offsets binding [E + 1] bounds each expert's rows, and B / SB are stacks of E weights. Each
   * workgroup row finds its segment and row tile on the device (one dispatch sized for the worst
   * case: ceil(rows / BM) + E row tiles, the surplus leaving at once).
   */
  grouped?: boolean;
  /**
   * Grouped along K (the routed experts' weight gradients, dW_e = g_segᵀ x_seg): A and B are [M, K] /
   * [N, K] with K the tokens sorted by expert, and the dispatch for expert e (param 6) contracts over
   * its segment offsets[e] .. offsets[e + 1] only, in blocks starting at the segment's first token;
   * both operands' scales are per row (1 x block), the segment's first at column
   * floor(offsets[e] / block) + e (the layout groupedQuantizeActT writes). Byte loads (the segments
   * start anywhere).
   */
  kGrouped?: boolean;
}

/**
 * Params: 0 M, 1 N, 2 K, 3 block, 4 kBlocks, 5 rows of b per bScale row (1: 'row', block: 'block');
 * grouped: 6 E, 7 bytes of B per expert, 8 scales of SB per expert (M is then the rows of A).
 * Bindings: C (f32, written), A (fp8 words), SA (f32), B (fp8 words), SB (f32); grouped: Offs (i32).
 */
export function gemmCode(v: GemmVariant): string {
  const { wgx, wgy, tm, tn, bk } = v.tile;
  const BM = wgy * tm;
  const BN = wgx * tn;
  const NT = wgx * wgy;
  const T = v.f16 ? 'f16' : 'f32';
  const decA = (e: string): string => (v.f16 ? `f16(${decodeFn(v.aType)}(${e}))` : `${decodeFn(v.aType)}(${e})`);
  const decB = (e: string): string => (v.f16 ? `f16(${decodeFn(v.bType)}(${e}))` : `${decodeFn(v.bType)}(${e})`);
  const zero = v.f16 ? 'f16(0.0)' : '0.0';
  const load = (
    tileName: string,
    src: string,
    rows: number,
    rowsVar: string,
    r0: string,
    dec: (e: string) => string,
  ): string =>
    v.words
      ? `for (var l = tid; l < ${(rows * bk) / 4}u; l = l + ${NT}u) {
        let row = l / ${bk / 4}u;
        let kw = (l % ${bk / 4}u) * 4u;
        let r = ${r0} + row;
        let k = k0 + kw;
        var w = 0u;
        if (r < ${rowsVar} && k < kEnd) { w = ${src}[(${src.toLowerCase()}Base + r * K + k) >> 2u]; }
        ${tileName}[kw * ${rows}u + row] = ${dec('w & 0xffu')};
        ${tileName}[(kw + 1u) * ${rows}u + row] = ${dec('(w >> 8u) & 0xffu')};
        ${tileName}[(kw + 2u) * ${rows}u + row] = ${dec('(w >> 16u) & 0xffu')};
        ${tileName}[(kw + 3u) * ${rows}u + row] = ${dec('w >> 24u')};
      }`
      : `for (var l = tid; l < ${rows * bk}u; l = l + ${NT}u) {
        let row = l / ${bk}u;
        let kk = l % ${bk}u;
        let r = ${r0} + row;
        let k = k0 + kk;
        var x = ${zero};
        if (r < ${rowsVar} && k < kEnd) { let idx = ${src.toLowerCase()}Base + r * K + k; x = ${dec(`byte_at(${src}[idx >> 2u], idx)`)}; }
        ${tileName}[kk * ${rows}u + row] = x;
      }`;
  const decls: BindingDecl[] = [
    { name: 'C', write: true, type: 'f32' },
    { name: 'A' },
    { name: 'SA', type: 'f32' },
    { name: 'B' },
    { name: 'SB', type: 'f32' },
    ...(v.grouped || v.kGrouped ? [{ name: 'Offs', type: 'i32' }] : []),
  ];
  return `${v.f16 ? 'enable f16;' : ''}
${paramsDecl(v.grouped ? 9 : v.kGrouped ? 7 : 6)}
${bindingDecls(decls)}
${FP8_LIB}
var<workgroup> As: array<${T}, ${bk * BM}>;
var<workgroup> Bs: array<${T}, ${bk * BN}>;
${v.grouped ? 'var<workgroup> seg: array<u32, 3>;' : ''}
@compute @workgroup_size(${wgx}, ${wgy})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let N = P(1u);
  let K = P(2u);
  let BLK = P(3u);
  let KB = P(4u);
  let G = P(5u);
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * ${wgx}u + tx;
  let n0 = wid.x * ${BN}u;
  ${v.grouped ? groupedPrologue(BM) : v.kGrouped ? kGroupedPrologue(BM) : plainPrologue(BM)}
  var acc: array<f32, ${tm * tn}>;
  for (var i = 0u; i < ${tm * tn}u; i = i + 1u) { acc[i] = 0.0; }
  for (var kb = 0u; kb < nKB; kb = kb + 1u) {
    // one block of the contraction: its partial sum in f32, then promotion with both scales
    var part: array<f32, ${tm * tn}>;
    for (var i = 0u; i < ${tm * tn}u; i = i + 1u) { part[i] = 0.0; }
    let kStart = kFirst + kb * BLK;
    let kEnd = min(kStart + BLK, kLast);
    for (var k0 = kStart; k0 < kEnd; k0 = k0 + ${bk}u) {
      ${load('As', 'A', BM, 'M', 'm0', decA)}
      ${load('Bs', 'B', BN, 'N', 'n0', decB)}
      workgroupBarrier();
      for (var kk = 0u; kk < ${bk}u; kk = kk + 1u) {
        var a: array<f32, ${tm}>;
        var b: array<f32, ${tn}>;
        for (var i = 0u; i < ${tm}u; i = i + 1u) { a[i] = f32(As[kk * ${BM}u + ty * ${tm}u + i]); }
        for (var j = 0u; j < ${tn}u; j = j + 1u) { b[j] = f32(Bs[kk * ${BN}u + tx * ${tn}u + j]); }
        for (var i = 0u; i < ${tm}u; i = i + 1u) {
          for (var j = 0u; j < ${tn}u; j = j + 1u) { part[i * ${tn}u + j] = part[i * ${tn}u + j] + a[i] * b[j]; }
        }
      }
      workgroupBarrier();
    }
    var sb: array<f32, ${tn}>;
    for (var j = 0u; j < ${tn}u; j = j + 1u) {
      let n = n0 + tx * ${tn}u + j;
      sb[j] = 0.0;
      if (n < N) { sb[j] = SB[sbBase + (n / G) * KB + slot0 + kb]; }
    }
    for (var i = 0u; i < ${tm}u; i = i + 1u) {
      let m = m0 + ty * ${tm}u + i;
      var sa = 0.0;
      if (m < M) { sa = SA[saBase + m * KB + slot0 + kb]; }
      for (var j = 0u; j < ${tn}u; j = j + 1u) { acc[i * ${tn}u + j] = acc[i * ${tn}u + j] + part[i * ${tn}u + j] * (sa * sb[j]); }
    }
  }
  for (var i = 0u; i < ${tm}u; i = i + 1u) {
    let m = m0 + ty * ${tm}u + i;
    if (m >= M) { break; }
    for (var j = 0u; j < ${tn}u; j = j + 1u) {
      let n = n0 + tx * ${tn}u + j;
      if (n < N) { C[cBase + m * N + n] = acc[i * ${tn}u + j]; }
    }
  }
}
`;
}

/** The plain kernel's tile: workgroup row wid.y, every operand from its start. */
function plainPrologue(BM: number): string {
  return `let M = P(0u); let m0 = wid.y * ${BM}u;
  let aBase = 0u; let saBase = 0u; let bBase = 0u; let sbBase = 0u; let cBase = 0u;
  let kFirst = 0u; let kLast = K; let nKB = KB; let slot0 = 0u;`;
}

/** The K-grouped kernel's tile: the plain one, contracting over expert P(6)'s segment of K. */
function kGroupedPrologue(BM: number): string {
  return `let M = P(0u); let m0 = wid.y * ${BM}u;
  let aBase = 0u; let saBase = 0u; let bBase = 0u; let sbBase = 0u; let cBase = 0u;
  let e = P(6u);
  let kFirst = u32(Offs[e]); let kLast = u32(Offs[e + 1u]);
  let nKB = (kLast - kFirst + BLK - 1u) / BLK; let slot0 = kFirst / BLK + e;`;
}

/** The grouped kernel's tile (core's segmentTileWgsl); every operand is addressed from its base. */
function groupedPrologue(BM: number): string {
  return `let E = P(6u);
  ${segmentTileWgsl(BM)}
  let m0 = 0u;
  let aBase = sg[1] * K; let saBase = sg[1] * KB; let cBase = sg[1] * N;
  let bBase = sg[2] * P(7u); let sbBase = sg[2] * P(8u);
  let kFirst = 0u; let kLast = K; let nKB = KB; let slot0 = 0u;`;
}
