// The grouped block-scaled FP8 GEMM on WebGPU (the MoE's routed experts in FP8 over device-side
// segments): the tiled kernel of gemm-tiled.ts in its grouped variant, the E expert weights and their
// 128x128 scales bound as two stacks (stack.ts), the segment offsets read on the device. One dispatch,
// nothing read back.
import { asWebGpu, layoutKey, type Backend, type KernelTensor } from '@dsv3/core';
import type { GroupedGemmAttrs, GroupedWgradAttrs } from '../tensor/attrs';
import { checkBinding, outT } from './common';
import { GEMM_TILE_SMALL, gemmCode, type GemmVariant } from './gemm-tiled';
import { stackOnDevice } from './stack';

const LAYOUT = layoutKey([
  { name: 'C', write: true },
  { name: 'A' },
  { name: 'SA' },
  { name: 'B' },
  { name: 'SB' },
  { name: 'Offs' },
]);
const codes = new Map<string, string>();

export function groupedBlockGemmGpu(b: Backend, inputs: KernelTensor[], attrs: GroupedGemmAttrs): KernelTensor[] {
  const be = asWebGpu(b, 'fp8 grouped GEMM (webgpu)');
  const [a, as, offsets] = inputs as [KernelTensor, KernelTensor, KernelTensor];
  const E = offsets.shape[0]! - 1;
  const qs = inputs.slice(3, 3 + E);
  const ss = inputs.slice(3 + E);
  const [N, K] = a.shape as [number, number];
  const O = qs[0]!.shape[0]!;
  const kBlocks = Math.ceil(K / attrs.block);
  const out = be.allocUninit('f32', N * O);
  if (N === 0) return [outT(out, [N, O], 'f32')];
  checkBinding(be, 'the grouped FP8 GEMM output', N * O * 4);
  checkBinding(be, 'the grouped FP8 GEMM activations', N * K);
  checkBinding(be, `the ${E} stacked FP8 expert weights`, E * Math.ceil((O * K) / 4) * 4);
  const q = stackOnDevice(be, qs, attrs.cache?.q);
  const s = stackOnDevice(be, ss, attrs.cache?.scales);
  // one 64-row tile per segment piece: decode-sized segments waste less of a tile than with 128 rows
  const tile = GEMM_TILE_SMALL;
  const v: GemmVariant = {
    tile,
    words: K % 4 === 0 && attrs.block % 4 === 0,
    f16: false,
    aType: a.dtype,
    bType: qs[0]!.dtype,
    grouped: true,
  };
  const key = `${+v.words}${v.aType}${v.bType}`;
  let code = codes.get(key);
  if (!code) codes.set(key, (code = gemmCode(v)));
  const BM = tile.wgy * tile.tm;
  const gx = Math.ceil(O / (tile.wgx * tile.tn));
  const gy = Math.ceil(N / BM) + E;
  const maxDim = be.limits.maxComputeWorkgroupsPerDimension;
  if (gx > maxDim || gy > maxDim)
    throw new RangeError(
      `@dsv3/fp8 (webgpu): a grouped ${N}x${O} output over ${E} experts needs ${gx}x${gy} workgroups, over the limit of ${maxDim} per dimension`,
    );
  const params = [N, O, K, attrs.block, kBlocks, attrs.block, E, q.strideBytes, s.strideBytes / 4];
  be.run(
    { label: `fp8_grouped_gemm${v.words ? '' : '_bytes'}`, code, layout: LAYOUT },
    [
      be.bind(out),
      be.bind(be.input(a)),
      be.bind(be.input(as)),
      be.bind(q.stacked),
      be.bind(s.stacked),
      be.bind(be.input(offsets)),
    ],
    params,
    [gx, gy, 1],
  );
  if (q.temporary) be.free(q.stacked);
  if (s.temporary) be.free(s.stacked);
  return [outT(out, [N, O], 'f32')];
}

/** The routed experts' weight gradients: the tiled kernel grouped along K, one dispatch per listed expert. */
export function groupedWgradGemmGpu(b: Backend, inputs: KernelTensor[], attrs: GroupedWgradAttrs): KernelTensor[] {
  const be = asWebGpu(b, 'fp8 grouped GEMM (webgpu)');
  const [gT, gS, xT, xS, offsets] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  const [O, R] = gT.shape as [number, number];
  const K = xT.shape[0]!;
  const nb = gS.shape[1]!;
  checkBinding(be, 'a weight gradient', O * K * 4);
  const tile = GEMM_TILE_SMALL;
  const v: GemmVariant = { tile, words: false, f16: false, aType: gT.dtype, bType: xT.dtype, kGrouped: true };
  const key = `k${v.aType}${v.bType}`;
  let code = codes.get(key);
  if (!code) codes.set(key, (code = gemmCode(v)));
  const bound = [gT, gS, xT, xS, offsets].map((t) => be.bind(be.input(t)));
  const gx = Math.ceil(K / (tile.wgx * tile.tn));
  const gy = Math.ceil(O / (tile.wgy * tile.tm));
  return attrs.experts.map((e) => {
    const out = be.allocUninit('f32', O * K);
    // an empty segment contracts over nothing: zeros
    be.run(
      { label: 'fp8_grouped_wgrad', code: code!, layout: LAYOUT },
      [be.bind(out), ...bound],
      [O, K, R, attrs.block, nb, 1, e],
      [gx, gy, 1],
    );
    return outT(out, [O, K], 'f32');
  });
}
