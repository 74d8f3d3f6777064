// The block-scaled FP8 GEMM kernel for WebGPU: picks the subgroup-matrix path (when enabled and the
// shape suits it) or the tiled kernel, with per-call options (GemmAttrs.webgpu).
import { asWebGpu, type Backend, type KernelTensor } from '@dsv3/core';
import type { GemmAttrs } from '../tensor/attrs';
import { checkBinding, outT, size } from './common';
import { chooseGemmTile, gemmCode, type GemmTile, type GemmVariant } from './gemm-tiled';
import { sgGemmCode, sgTile, subgroupPaths, type SgFp8Variant } from './gemm-subgroup';

/** How the WebGPU GEMM runs (BlockGemmTOptions.webgpu); the defaults suit every device. */
export interface GemmRunOptions {
  /** f16 workgroup tiles (needs shader-f16) instead of the default f32 ones */
  f16?: boolean;
  tile?: GemmTile;
  /** false: never take the subgroup-matrix path even when enabled on the device */
  subgroupMatrix?: boolean;
  /** test hook: run the subgroup-matrix kernel's skeleton with scalar emulation of the matrix builtins, for this matrix shape */
  emulateSubgroupMatrix?: { M: number; N: number; K: number };
}

export function blockGemmGpu(b: Backend, [a, as, bb, bs]: KernelTensor[], attrs: GemmAttrs): KernelTensor[] {
  const be = asWebGpu(b, 'fp8 (webgpu)');
  const K = a!.shape[a!.shape.length - 1]!;
  const M = size(a!.shape.slice(0, -1));
  const N = bb!.shape[0]!;
  const kBlocks = Math.ceil(K / attrs.block);
  const out = be.allocUninit('f32', M * N);
  if (M === 0 || N === 0) return [outT(out, [M, N], 'f32')];
  checkBinding(be, 'fp8GemmBlockScaled output', M * N * 4);
  checkBinding(be, 'fp8GemmBlockScaled a', M * K);
  checkBinding(be, 'fp8GemmBlockScaled b', N * K);
  if (M * K >= 2 ** 32 || N * K >= 2 ** 32) throw new RangeError('@dsv3/fp8 (webgpu): operands over 2^32 elements');
  const o = attrs.webgpu ?? {};
  const tile = o.tile ?? chooseGemmTile(M, N);
  const v: GemmVariant = {
    tile,
    words: K % 4 === 0 && attrs.block % 4 === 0,
    // f32 tiles by default: the f16 variant (tested, bit-for-bit the same products) measured slower on
    // lavapipe and is unmeasured on real GPUs; opt in with the option webgpu: { f16: true }
    f16: o.f16 ?? false,
    aType: a!.dtype,
    bType: bb!.dtype,
  };
  if (v.f16 && !be.features.shaderF16)
    throw new Error('@dsv3/fp8 (webgpu): f16 tiles requested but the device has no shader-f16');
  const buffers = [
    be.bind(out),
    be.bind(be.input(a!)),
    be.bind(be.input(as!)),
    be.bind(be.input(bb!)),
    be.bind(be.input(bs!)),
  ];
  const params = [M, N, K, attrs.block, kBlocks, attrs.bScaleLayout === 'row' ? 1 : attrs.block];
  if (o.emulateSubgroupMatrix && v.words) {
    const sv: SgFp8Variant = {
      config: o.emulateSubgroupMatrix,
      legacySyntax: false,
      subgroupSize: 32,
      sgTile: sgTile(o.emulateSubgroupMatrix),
      emulate: true,
    };
    const { bm, bn } = sv.sgTile;
    be.run({ label: 'fp8_gemm_subgroup_matrix_emulated', code: sgGemmCode(sv), layout: 'uwrrrr' }, buffers, params, [
      Math.ceil(N / bn),
      Math.ceil(M / bm),
      1,
    ]);
    return [outT(out, [M, N], 'f32')];
  }
  const sg = subgroupPaths.get(be.device);
  if (
    sg &&
    o.subgroupMatrix !== false &&
    v.words &&
    M >= 32 &&
    N >= 32 &&
    a!.dtype === 'fp8-e4m3' &&
    bb!.dtype === 'fp8-e4m3'
  ) {
    const sv: SgFp8Variant = { ...sg, sgTile: sgTile(sg.config) };
    const { bm, bn } = sv.sgTile;
    be.run({ label: 'fp8_gemm_subgroup_matrix', code: sgGemmCode(sv), layout: 'uwrrrr' }, buffers, params, [
      Math.ceil(N / bn),
      Math.ceil(M / bm),
      1,
    ]);
    return [outT(out, [M, N], 'f32')];
  }
  const decls = 'uwrrrr';
  const code = gemmCode(v);
  const BM = tile.wgy * tile.tm;
  const BN = tile.wgx * tile.tn;
  const gy = Math.ceil(M / BM);
  const gx = Math.ceil(N / BN);
  const maxDim = be.limits.maxComputeWorkgroupsPerDimension;
  if (gx > maxDim || gy > maxDim)
    throw new RangeError(
      `@dsv3/fp8 (webgpu): a ${M}x${N} output needs ${gx}x${gy} workgroups, over the limit of ${maxDim} per dimension`,
    );
  be.run({ label: `fp8_gemm${v.f16 ? '_f16' : ''}${v.words ? '' : '_bytes'}`, code, layout: decls }, buffers, params, [
    gx,
    gy,
    1,
  ]);
  return [outT(out, [M, N], 'f32')];
}
