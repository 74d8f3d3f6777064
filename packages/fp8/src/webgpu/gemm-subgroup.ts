import {
  asWebGpu,
  bindingDecls,
  fromRaw,
  paramsDecl,
  randn,
  subgroupMatrixSyntax,
  type Backend,
  type Tensor,
} from '@dsv3/core';
import { relativeError } from '@dsv3/core/testing';
import { FP8_LIB } from './wgsl';

// ---- subgroup-matrix (tensor core) path: UNVALIDATED ----
//
// Through Dawn's chromium-experimental-subgroup-matrix (f16 x f16 → f32 matrices). E4M3 values are
// exact in f16, so the per-block products are those of the tiled kernel; the partial of each
// 128-wide K block is accumulated in f32 result matrices, stored to workgroup memory and promoted
// by each lane into its f32 registers with both scales (acc += partial * sa * sb) — DeepGEMM's
// scheme. A workgroup of four subgroups (2 x 2) computes a (2·FM·SM) x (2·FN·SN) tile.
//
// No adapter available to this project exposes the feature (lavapipe does not), so this kernel has
// never run. It is off unless `enableFp8SubgroupMatrix(backend)` succeeds, which requires core's own
// subgroup-matrix GEMM to have passed its self-test (so the builtin spelling and the config are
// known good), builds this kernel, and compares it with the tiled kernel on aligned and ragged
// products (relative L2 <= 1e-6); anything else leaves the tiled kernel in charge.

export interface SgConfig {
  config: { M: number; N: number; K: number };
  legacySyntax: boolean;
  /** the subgroup size the code is generated for (checked by the self-test) */
  subgroupSize: number;
}

export interface SgFp8Variant extends SgConfig {
  sgTile: { fm: number; fn: number; bm: number; bn: number };
  /**
   * Test hook: replace the subgroup-matrix builtins by scalar code with the same load / store
   * layouts (each lane computes its share of every result matrix straight into workgroup memory),
   * so the tiling, fragment offsets, promotion and edge handling can be checked on any adapter.
   * It cannot check the builtins themselves.
   */
  emulate?: boolean;
}

const SG_BK = 32;
export const subgroupPaths = new WeakMap<GPUDevice, SgConfig>();

export function sgTile(c: { M: number; N: number }): { fm: number; fn: number; bm: number; bn: number } {
  const fm = Math.max(1, 32 / c.M);
  const fn = Math.max(1, 32 / c.N);
  return { fm, fn, bm: 2 * fm * c.M, bn: 2 * fn * c.N };
}

export function sgGemmCode(v: SgFp8Variant): string {
  const { M: SM, N: SN, K: SK } = v.config;
  const { fm: FM, fn: FN, bm: BM, bn: BN } = v.sgTile;
  const SG = v.subgroupSize;
  const WG = 4 * SG;
  const E = FM * FN * SM * SN; // result elements per subgroup
  if (E % SG !== 0) throw new Error(`internal: ${E} result elements do not split over a subgroup of ${SG}`);
  const PER = E / SG;
  const { L, R, RES, load, store } = subgroupMatrixSyntax(v.config, v.legacySyntax);
  const tileLoad = (
    dst: string,
    src: string,
    rows: number,
    rowsVar: string,
    r0: string,
  ): string => `for (var l = lid; l < ${(rows * SG_BK) / 4}u; l = l + ${WG}u) {
        let row = l / ${SG_BK / 4}u;
        let kw = (l % ${SG_BK / 4}u) * 4u;
        let r = ${r0} + row;
        let k = k0 + kw;
        var w = 0u;
        if (r < ${rowsVar} && k < kEnd) { w = ${src}[(r * K + k) >> 2u]; }
        let o = row * ${SG_BK}u + kw;
        ${dst}[o] = f16(e4m3_to_f32(w & 0xffu));
        ${dst}[o + 1u] = f16(e4m3_to_f32((w >> 8u) & 0xffu));
        ${dst}[o + 2u] = f16(e4m3_to_f32((w >> 16u) & 0xffu));
        ${dst}[o + 3u] = f16(e4m3_to_f32(w >> 24u));
      }`;
  let decl = '';
  let mma = '';
  let stores = '';
  for (let i = 0; i < FM; i++)
    mma += `          let l${i} = ${load(L, '&As', `(sgm * ${FM * SM}u + ${i * SM}u) * ${SG_BK}u + kk`, false, `${SG_BK}u`)};\n`;
  for (let j = 0; j < FN; j++) {
    mma += `          { let r = ${load(R, '&Bs', `(sgn * ${FN * SN}u + ${j * SN}u) * ${SG_BK}u + kk`, true, `${SG_BK}u`)};\n`;
    for (let i = 0; i < FM; i++)
      mma += `            p${i}_${j} = subgroupMatrixMultiplyAccumulate(l${i}, r, p${i}_${j});\n`;
    mma += '          }\n';
  }
  for (let i = 0; i < FM; i++) {
    for (let j = 0; j < FN; j++) {
      decl += `    var p${i}_${j} = ${RES}();\n`;
      stores += `    ${store('&Cs', `sg * ${E}u + ${(i * FN + j) * SM * SN}u`, `p${i}_${j}`, `${SN}u`)};\n`;
    }
  }
  if (v.emulate) {
    // left (SM x SK) row-major from As at (row0 + r) * BK + kk + k; right (SK x SN) column-major
    // from Bs at (col0 + c) * BK + kk + k; result (r, c) row-major in Cs — the layouts used above
    decl = `    for (var t = 0u; t < ${PER}u; t = t + 1u) { Cs[sg * ${E}u + lane + t * ${SG}u] = 0.0; }\n`;
    mma = `          for (var t = 0u; t < ${PER}u; t = t + 1u) {
            let e = lane + t * ${SG}u;
            let f = e / ${SM * SN}u;
            let r0 = sgm * ${FM * SM}u + (f / ${FN}u) * ${SM}u + (e % ${SM * SN}u) / ${SN}u;
            let c0 = sgn * ${FN * SN}u + (f % ${FN}u) * ${SN}u + e % ${SN}u;
            var d = 0.0;
            for (var k = 0u; k < ${SK}u; k = k + 1u) { d = d + f32(As[r0 * ${SG_BK}u + kk + k]) * f32(Bs[c0 * ${SG_BK}u + kk + k]); }
            Cs[sg * ${E}u + e] = Cs[sg * ${E}u + e] + d;
          }\n`;
    stores = '';
  }
  // element e of a subgroup's results: fragment f = e / (SM*SN) = i * FN + j, then row-major within it
  const coords = `let f = e / ${SM * SN}u;
      let i = f / ${FN}u;
      let j = f % ${FN}u;
      let m = m0 + sgm * ${FM * SM}u + i * ${SM}u + (e % ${SM * SN}u) / ${SN}u;
      let n = n0 + sgn * ${FN * SN}u + j * ${SN}u + e % ${SN}u;`;
  const header = v.emulate
    ? 'enable f16;'
    : `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium_experimental.subgroup_matrix_uniformity);`;
  return `${header}
${paramsDecl(6)}
${bindingDecls([{ name: 'C', write: true, type: 'f32' }, { name: 'A' }, { name: 'SA', type: 'f32' }, { name: 'B' }, { name: 'SB', type: 'f32' }])}
${FP8_LIB}
var<workgroup> As: array<f16, ${BM * SG_BK}>;
var<workgroup> Bs: array<f16, ${BN * SG_BK}>;
var<workgroup> Cs: array<f32, ${4 * E}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let M = P(0u);
  let N = P(1u);
  let K = P(2u);
  let BLK = P(3u);
  let KB = P(4u);
  let G = P(5u);
  let m0 = wid.y * ${BM}u;
  let n0 = wid.x * ${BN}u;
  // subgroups assumed to be consecutive runs of ${SG} invocations (the self-test checks the result)
  let sg = lid / ${SG}u;
  let lane = lid % ${SG}u;
  let sgm = sg / 2u;
  let sgn = sg % 2u;
  var acc: array<f32, ${PER}>;
  for (var t = 0u; t < ${PER}u; t = t + 1u) { acc[t] = 0.0; }
  for (var kb = 0u; kb < KB; kb = kb + 1u) {
${decl}    let kStart = kb * BLK;
    let kEnd = min(kStart + BLK, K);
    for (var k0 = kStart; k0 < kEnd; k0 = k0 + ${SG_BK}u) {
      ${tileLoad('As', 'A', BM, 'M', 'm0')}
      ${tileLoad('Bs', 'B', BN, 'N', 'n0')}
      workgroupBarrier();
      for (var kk = 0u; kk < ${SG_BK}u; kk = kk + ${SK}u) {
${mma}      }
      workgroupBarrier();
    }
    // promotion: the block's f32 partials through workgroup memory into per-lane f32 accumulators
${stores}    workgroupBarrier();
    for (var t = 0u; t < ${PER}u; t = t + 1u) {
      let e = lane + t * ${SG}u;
      ${coords}
      var s = 0.0;
      if (m < M && n < N) { s = SA[m * KB + kb] * SB[(n / G) * KB + kb]; }
      acc[t] = acc[t] + Cs[sg * ${E}u + e] * s;
    }
    workgroupBarrier();
  }
  for (var t = 0u; t < ${PER}u; t = t + 1u) {
    let e = lane + t * ${SG}u;
    ${coords}
    if (m < M && n < N) { C[m * N + n] = acc[t]; }
  }
}
`;
}

/**
 * Turns on the subgroup-matrix FP8 GEMM for this backend if it builds and passes a self-test
 * against the tiled kernel; resolves to a status line either way. UNVALIDATED: no device available
 * to this project has the feature, so expect 'unavailable' everywhere it was tested.
 */
export async function enableFp8SubgroupMatrix(backend: Backend): Promise<string> {
  if (backend.name !== 'webgpu') return 'unavailable: not a WebGPU backend';
  const be = asWebGpu(backend, 'enableFp8SubgroupMatrix');
  const core = be.subgroupMatrixGemm;
  if (!core)
    return "unavailable: core's subgroup-matrix GEMM is not enabled on this device (no chromium-experimental-subgroup-matrix f16 config, or its self-test failed)";
  const sgs = be.adapterInfo?.subgroupMaxSize ?? 32;
  if (be.adapterInfo?.subgroupMinSize !== undefined && be.adapterInfo.subgroupMinSize !== sgs)
    return `unavailable: variable subgroup size (${be.adapterInfo.subgroupMinSize}..${sgs})`;
  const cfg: SgConfig = { config: core.config, legacySyntax: core.legacySyntax, subgroupSize: sgs };
  const v: SgFp8Variant = { ...cfg, sgTile: sgTile(cfg.config) };
  let code: string;
  try {
    code = sgGemmCode(v);
  } catch (e) {
    return `unavailable: ${e instanceof Error ? e.message : String(e)}`;
  }
  const dev = be.device;
  dev.pushErrorScope('validation');
  const module = dev.createShaderModule({ code, label: 'fp8_gemm_subgroup_matrix' });
  let buildError = '';
  try {
    await dev.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  } catch (e) {
    buildError = e instanceof Error ? e.message : String(e);
  }
  const err = await dev.popErrorScope();
  if (err || buildError)
    return `unavailable: the kernel does not build (${(buildError || err!.message).slice(0, 300)})`;
  // self-test against the tiled kernel (which is validated against the goldens)
  const { quantizeActivationT, quantizeWeightT, fp8GemmBlockScaledT } = await import('../tensor/ops');
  let worst = 0;
  try {
    for (const [m, n, k] of [
      [192, 160, 384],
      [70, 45, 300],
    ] as const) {
      const x = quantizeActivationT(randn([m, k], { seed: m }));
      const w = quantizeWeightT(randn([n, k], { seed: n }));
      const on = (t: Tensor): Tensor => fromRaw(t.dtype, t.shape, t.rawSync(), backend);
      const args = [on(x.q), on(x.scales), on(w.q), on(w.scales)] as const;
      subgroupPaths.set(be.device, cfg);
      const fast = (await fp8GemmBlockScaledT(...args).data()) as Float32Array;
      subgroupPaths.delete(be.device);
      const ref = (await fp8GemmBlockScaledT(...args).data()) as Float32Array;
      const e = relativeError(fast, ref);
      worst = Math.max(worst, Number.isFinite(e) ? e : Infinity);
    }
  } catch (e) {
    subgroupPaths.delete(be.device);
    return `unavailable: self-test failed (${e instanceof Error ? e.message : String(e)})`;
  }
  if (!(worst <= 1e-6))
    return `unavailable: self-test mismatch (relative L2 ${worst.toExponential(2)} vs the tiled kernel)`;
  subgroupPaths.set(be.device, cfg);
  return `enabled: f16 ${core.config.M}x${core.config.N}x${core.config.K} subgroup matrices, self-test relative L2 ${worst.toExponential(2)}`;
}
