// f16 GEMM on subgroup matrices (tensor cores) through Dawn's chromium-experimental-subgroup-matrix:
// f16 operands, f32 accumulation, f32 result (packed to f16 by the caller).
//
// A workgroup of four subgroups computes a (2·FM·SM) x (2·FN·SN) block of C; each subgroup owns an
// FM x FN grid of SM x SN result matrices. A and B tiles are staged in workgroup memory in their
// global storage order (vectorised 8-half loads when the contiguous axis allows, zero-filled at the
// edges), and transposed operands are read with column-major matrix loads, so transA/transB cost
// nothing. Interior blocks store straight to C; edge blocks go through workgroup memory with
// bounds checks.
//
// This path cannot run on lavapipe (no cooperative matrices), so the backend only enables it after
// a self-test on the device compares it with the tiled kernel (selfTestSubgroupMatmul); any build
// error or mismatch leaves the tiled kernel in charge. It has not been validated on real hardware
// in this repository's CI.
import { planMatmul } from '../../cpu/matmul.js';
import { sizeOf } from '../../shape.js';
import type { SubgroupMatrixConfig, WebGpuBackend, WebGpuStorage } from '../backend.js';
import { layoutKey, paramsDecl } from '../wgsl.js';
import { batchDecodeWgsl, batchPlan, MAX_BATCH_DIMS, type GemmArgs } from './matmul.js';

export interface SgmmVariant {
  config: SubgroupMatrixConfig;
  /** the older builtin spelling: subgroupMatrixLoad<T>(p, off, col_major, stride) */
  legacySyntax: boolean;
  subgroupSize: number;
  transA: boolean;
  transB: boolean;
  vecA: boolean;
  vecB: boolean;
}

const BK = 32;

function fragments(c: SubgroupMatrixConfig): { fm: number; fn: number } {
  // 64x64 per subgroup for 16x16 matrices (16 accumulators), 32x32 for 8x8.
  return { fm: 4, fn: Math.max(1, Math.round(64 / c.N / (c.M >= 16 ? 1 : 2))) };
}

export function sgmmTile(c: SubgroupMatrixConfig): { bm: number; bn: number } {
  const f = fragments(c);
  return { bm: 2 * f.fm * c.M, bn: 2 * f.fn * c.N };
}

/** Shared workgroup memory of the kernel, in bytes. */
export function sgmmSharedBytes(c: SubgroupMatrixConfig): number {
  const { bm, bn } = sgmmTile(c);
  return bm * BK * 2 + BK * bn * 2 + 4 * c.M * c.N * 4;
}

/** WGSL spelling of f16 x f16 → f32 subgroup matrices: their types, and loads / stores in either syntax. */
export interface SubgroupMatrixSyntax {
  L: string;
  R: string;
  RES: string;
  load(ty: string, ptr: string, off: string, colMajor: boolean, stride: string): string;
  store(ptr: string, off: string, val: string, stride: string): string;
}

/**
 * The types and load/store calls of chromium-experimental-subgroup-matrix for `config`, in the
 * syntax the device's Dawn accepts (`legacySyntax`: the older argument order of loads and stores).
 */
export function subgroupMatrixSyntax(
  config: { M: number; N: number; K: number },
  legacySyntax: boolean,
): SubgroupMatrixSyntax {
  const { M: SM, N: SN, K: SK } = config;
  return {
    L: `subgroup_matrix_left<f16, ${SK}, ${SM}>`,
    R: `subgroup_matrix_right<f16, ${SN}, ${SK}>`,
    RES: `subgroup_matrix_result<f32, ${SN}, ${SM}>`,
    load: (ty, ptr, off, colMajor, stride) =>
      legacySyntax
        ? `subgroupMatrixLoad<${ty}>(${ptr}, ${off}, ${colMajor}, ${stride})`
        : `subgroupMatrixLoad<${ty}, ${colMajor ? 'col_major' : 'row_major'}>(${ptr}, ${off}, ${stride})`,
    store: (ptr, off, val, stride) =>
      legacySyntax
        ? `subgroupMatrixStore(${ptr}, ${off}, ${val}, false, ${stride})`
        : `subgroupMatrixStore<row_major>(${ptr}, ${off}, ${val}, ${stride})`,
  };
}

export function sgmmCode(v: SgmmVariant): string {
  const { M: SM, N: SN, K: SK } = v.config;
  const { fm: FM, fn: FN } = fragments(v.config);
  const { bm: BM, bn: BN } = sgmmTile(v.config);
  const WG = 4 * v.subgroupSize;
  const { L, R, RES, load, store } = subgroupMatrixSyntax(v.config, v.legacySyntax);

  // Tile loaders: a rows x cols tile in global storage order (cols = the contiguous axis).
  const tile = (
    dst: string,
    src: string,
    vec: boolean,
    rows: number,
    cols: number,
    base: string,
    gstride: string,
    rb: string,
    cb: string,
  ): string => {
    if (!vec) {
      return `for (var l = lid; l < ${rows * cols}u; l = l + ${WG}u) {
      let r = l / ${cols}u; let c = l % ${cols}u;
      var h = f16(0.0);
      if (r < ${rb} && c < ${cb}) { h = ${src}[${base} + r * ${gstride} + c]; }
      ${dst}[l] = h;
    }`;
    }
    return `for (var l = lid; l < ${(rows * cols) / 8}u; l = l + ${WG}u) {
      let r = l / ${cols / 8}u; let c = (l % ${cols / 8}u) * 8u;
      var w = vec4<u32>(0u);
      if (r < ${rb} && c < ${cb}) { w = ${src}[(${base} + r * ${gstride} + c) / 8u]; }
      let o = r * ${cols}u + c;
      let h0 = bitcast<vec2<f16>>(w.x); let h1 = bitcast<vec2<f16>>(w.y); let h2 = bitcast<vec2<f16>>(w.z); let h3 = bitcast<vec2<f16>>(w.w);
      ${dst}[o] = h0.x; ${dst}[o + 1u] = h0.y; ${dst}[o + 2u] = h1.x; ${dst}[o + 3u] = h1.y;
      ${dst}[o + 4u] = h2.x; ${dst}[o + 5u] = h2.y; ${dst}[o + 6u] = h3.x; ${dst}[o + 7u] = h3.y;
    }`;
  };
  const loadA = v.transA
    ? tile('As', 'A', v.vecA, BK, BM, 'aOff + k0 * M + m0', 'M', 'K - k0', 'M - m0')
    : tile('As', 'A', v.vecA, BM, BK, 'aOff + m0 * K + k0', 'K', 'M - m0', 'K - k0');
  const loadB = v.transB
    ? tile('Bs', 'B', v.vecB, BN, BK, 'bOff + n0 * K + k0', 'K', 'N - n0', 'K - k0')
    : tile('Bs', 'B', v.vecB, BK, BN, 'bOff + k0 * N + n0', 'N', 'K - k0', 'N - n0');

  // Matrix loads from the staged tiles, unrolled so every accumulator index is a constant.
  const rowA = (i: number): string => `sgm * ${FM * SM}u + ${i * SM}u`;
  const colB = (j: number): string => `sgn * ${FN * SN}u + ${j * SN}u`;
  const leftAt = (i: number): string =>
    v.transA
      ? load(L, '&As', `kk * ${BM}u + ${rowA(i)}`, true, `${BM}u`)
      : load(L, '&As', `(${rowA(i)}) * ${BK}u + kk`, false, `${BK}u`);
  const rightAt = (j: number): string =>
    v.transB
      ? load(R, '&Bs', `(${colB(j)}) * ${BK}u + kk`, true, `${BK}u`)
      : load(R, '&Bs', `kk * ${BN}u + ${colB(j)}`, false, `${BN}u`);
  let mma = '';
  for (let i = 0; i < FM; i++) mma += `        let l${i} = ${leftAt(i)};\n`;
  for (let j = 0; j < FN; j++) {
    mma += `        { let r = ${rightAt(j)};\n`;
    for (let i = 0; i < FM; i++)
      mma += `          acc${i}_${j} = subgroupMatrixMultiplyAccumulate(l${i}, r, acc${i}_${j});\n`;
    mma += '        }\n';
  }
  let accs = '';
  for (let i = 0; i < FM; i++) for (let j = 0; j < FN; j++) accs += `  var acc${i}_${j}: ${RES};\n`;
  let direct = '';
  let staged = '';
  for (let i = 0; i < FM; i++) {
    for (let j = 0; j < FN; j++) {
      const gm = `m0 + ${rowA(i)}`;
      const gn = `n0 + ${colB(j)}`;
      direct += `      ${store('&C', `cOff + (${gm}) * N + ${gn}`, `acc${i}_${j}`, 'N')};\n`;
      staged += `    if (sg < 4u) { ${store('&Cs', `sg * ${SM * SN}u`, `acc${i}_${j}`, `${SN}u`)}; }
    workgroupBarrier();
    if (sg < 4u) {
      for (var e = lane; e < ${SM * SN}u; e = e + sgs) {
        let gm = ${gm} + e / ${SN}u;
        let gn = ${gn} + e % ${SN}u;
        if (gm < M && gn < N) { C[cOff + gm * N + gn] = Cs[sg * ${SM * SN}u + e]; }
      }
    }
    workgroupBarrier();
`;
    }
  }
  const batchDecode = batchDecodeWgsl();
  return `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium_experimental.subgroup_matrix_uniformity);
${paramsDecl(7 + 3 * MAX_BATCH_DIMS)}
@group(0) @binding(1) var<storage, read_write> C: array<f32>;
@group(0) @binding(2) var<storage, read> A: array<${v.vecA ? 'vec4<u32>' : 'f16'}>;
@group(0) @binding(3) var<storage, read> B: array<${v.vecB ? 'vec4<u32>' : 'f16'}>;
var<workgroup> As: array<f16, ${BM * BK}>;
var<workgroup> Bs: array<f16, ${BK * BN}>;
var<workgroup> Cs: array<f32, ${4 * SM * SN}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_size) sgs: u32) {
  let M = P(0u);
  let N = P(1u);
  let K = P(2u);
  let z = wid.z + P(3u);
  ${batchDecode}
  let aOff = aMat * M * K;
  let bOff = bMat * K * N;
  let cOff = z * M * N;
  let m0 = wid.y * ${BM}u;
  let n0 = wid.x * ${BN}u;
  // Subgroups are assumed to be consecutive runs of local_invocation_index (the self-test checks).
  let sg = lid / sgs;
  let lane = lid % sgs;
  let sgm = sg / 2u;
  let sgn = sg % 2u;
${accs}
  for (var k0 = 0u; k0 < K; k0 = k0 + ${BK}u) {
    ${loadA}
    ${loadB}
    workgroupBarrier();
    if (sg < 4u) {
      for (var kk = 0u; kk < ${BK}u; kk = kk + ${SK}u) {
${mma}      }
    }
    workgroupBarrier();
  }
  if (m0 + ${BM}u <= M && n0 + ${BN}u <= N) {
    if (sg < 4u) {
${direct}    }
  } else {
${staged}  }
}
`;
}

/** Whether the subgroup-matrix path should take this product. */
export function subgroupMatmulApplies(be: WebGpuBackend, args: GemmArgs): boolean {
  if (!be.subgroupMatrixGemm || args.aType !== 'f16' || args.bType !== 'f16') return false;
  const p = planMatmul(args.aShape, args.bShape, args.transA, args.transB);
  // Small products gain nothing from tensor cores and would mostly run the edge path.
  if (p.m < 32 || p.n < 32 || p.k < 32) return false;
  const batch = sizeOf(p.batchShape);
  return (
    batch * p.m * p.n * 4 <= be.bindingLimit &&
    args.a.byteLength <= be.bindingLimit &&
    args.b.byteLength <= be.bindingLimit
  );
}

/** Records the subgroup-matrix GEMM; returns f32 storage of the [batch.., M, N] result. */
export function subgroupMatmul(
  be: WebGpuBackend,
  args: GemmArgs,
  variant?: { config: SubgroupMatrixConfig; legacySyntax: boolean },
): { out: WebGpuStorage; shape: number[] } {
  const sel = variant ?? be.subgroupMatrixGemm;
  if (!sel) throw new Error('webgpu: the subgroup-matrix GEMM is not available on this device');
  const p = planMatmul(args.aShape, args.bShape, args.transA, args.transB);
  const { m, n, k } = p;
  const shape = [...p.batchShape, m, n];
  const batch = sizeOf(p.batchShape);
  const out = be.allocUninit('f32', batch * m * n);
  if (batch * m * n === 0) return { out, shape };
  const bp = batchPlan(args.aShape, args.bShape, p.batchShape);
  if (bp.dims.length > MAX_BATCH_DIMS)
    throw new RangeError(`webgpu matmul: more than ${MAX_BATCH_DIMS} independent batch dimensions; reshape first`);
  const v: SgmmVariant = {
    config: sel.config,
    legacySyntax: sel.legacySyntax,
    subgroupSize: be.adapterInfo.subgroupMaxSize ?? 32,
    transA: args.transA,
    transB: args.transB,
    vecA: (args.transA ? m : k) % 8 === 0,
    vecB: (args.transB ? k : n) % 8 === 0,
  };
  const kernel = {
    label: `matmul_sgmm_f16${args.transA ? '_tA' : ''}${args.transB ? '_tB' : ''}`,
    code: sgmmCode(v),
    layout: layoutKey([{ name: 'C', write: true }, { name: 'A' }, { name: 'B' }]),
  };
  const { bm, bn } = sgmmTile(sel.config);
  const maxDim = be.limits.maxComputeWorkgroupsPerDimension;
  const tail: number[] = [];
  bp.dims.forEach((d, i) => tail.push(d, bp.sa[i]!, bp.sb[i]!));
  for (let z0 = 0; z0 < batch; z0 += maxDim) {
    be.run(
      kernel,
      [be.bind(out), be.bind(args.a), be.bind(args.b)],
      [m, n, k, z0, +args.transA, +args.transB, bp.dims.length, ...tail],
      [Math.ceil(n / bn), Math.ceil(m / bm), Math.min(maxDim, batch - z0)],
    );
  }
  return { out, shape };
}

/** The f16 → f32 config to use, preferring 16x16x16. */
export function pickSubgroupConfig(configs: readonly SubgroupMatrixConfig[]): SubgroupMatrixConfig | null {
  const ok = configs.filter((c) => c.componentType === 'f16' && c.resultComponentType === 'f32');
  if (!ok.length) return null;
  return (
    ok.find((c) => c.M === 16 && c.N === 16 && c.K === 16) ??
    [...ok].sort((a, b) => b.M * b.N * b.K - a.M * a.N * a.K)[0]!
  );
}

/** Variants the self-test builds (each trans combination, vectorised and scalar loads). */
export function selfTestVariants(
  config: SubgroupMatrixConfig,
  legacySyntax: boolean,
  subgroupSize: number,
): SgmmVariant[] {
  const out: SgmmVariant[] = [];
  for (const transA of [false, true])
    for (const transB of [false, true])
      for (const vec of [true, false])
        out.push({ config, legacySyntax, subgroupSize, transA, transB, vecA: vec, vecB: vec });
  return out;
}
