// Tensor-level FP8 API on top of @dsv3/core: the quantizers, dequantizers and the block-scaled GEMM
// as Tensor functions, dispatched through core's kernel registry (op names in attrs.ts) to the
// backend the inputs live on ('cpu' here, 'webgpu' in webgpu/kernels.ts).
//
// None of these record autograd history: quantization is not differentiable. FP8Linear (linear.ts)
// wraps them with a custom backward.
import { Tensor, cast, exec, type Backend } from '@dsv3/core';
import '../register';
import type { QuantizeOptions, ScaleFormat } from '../quant';
import type { BScaleLayout } from '../gemm';
import type { GemmRunOptions } from '../webgpu/gemm';
import {
  FP8_OPS,
  type DequantAttrs,
  type GemmAttrs,
  type GroupedGemmAttrs,
  type GroupedWgradAttrs,
  type QuantAttrs,
} from './attrs';

/** FP8 bytes (dtype fp8-e4m3) and their f32 scales. */
export interface QuantizedTensor {
  q: Tensor;
  scales: Tensor;
}

const DEFAULT_FLOOR = Math.fround(1e-4);

const fmt = (s: readonly number[]): string => `[${s.join(', ')}]`;

function quantAttrs(op: string, o: QuantizeOptions): QuantAttrs {
  const block = o.block ?? 128;
  if (!Number.isInteger(block) || block < 1)
    throw new RangeError(`${op}: block must be a positive integer, got ${block}`);
  const scaleFormat: ScaleFormat = o.scaleFormat ?? 'fp32';
  if (scaleFormat !== 'fp32' && scaleFormat !== 'ue8m0')
    throw new RangeError(`${op}: scaleFormat must be 'fp32' or 'ue8m0', got ${JSON.stringify(scaleFormat)}`);
  const amaxFloor = o.amaxFloor === undefined ? DEFAULT_FLOOR : Math.fround(o.amaxFloor);
  if (!(amaxFloor > 0) || !Number.isFinite(amaxFloor))
    throw new RangeError(`${op}: amaxFloor must be a positive finite number, got ${o.amaxFloor}`);
  return { block, scaleFormat, amaxFloor };
}

function blockOf(op: string, block: number | undefined): number {
  const b = block ?? 128;
  if (!Number.isInteger(b) || b < 1) throw new RangeError(`${op}: block must be a positive integer, got ${b}`);
  return b;
}

/** f32 input (other float dtypes are cast first; f64 is rounded to f32, as the typed-array layer does). */
function asF32(op: string, x: Tensor): Tensor {
  if (!(x instanceof Tensor)) throw new TypeError(`${op}: expected a Tensor`);
  if (x.dtype === 'f32') return x;
  if (x.dtype === 'f64' || x.dtype === 'f16' || x.dtype === 'bf16') return cast(x.detach(), 'f32');
  throw new TypeError(`${op}: expected a float tensor (f32, f64, f16, bf16), got ${x.dtype}`);
}

function requireFp8(op: string, what: string, t: Tensor, allowE5M2 = true): void {
  if (!(t instanceof Tensor)) throw new TypeError(`${op}: ${what} must be a Tensor`);
  if (t.dtype !== 'fp8-e4m3' && !(allowE5M2 && t.dtype === 'fp8-e5m2')) {
    throw new TypeError(
      `${op}: ${what} must be an fp8-e4m3${allowE5M2 ? ' (or fp8-e5m2)' : ''} tensor, got ${t.dtype}`,
    );
  }
}

function requireF32(op: string, what: string, t: Tensor): void {
  if (!(t instanceof Tensor)) throw new TypeError(`${op}: ${what} must be a Tensor`);
  if (t.dtype !== 'f32') throw new TypeError(`${op}: ${what} must be an f32 tensor, got ${t.dtype}`);
}

function sameBackend(op: string, ts: Tensor[]): Backend {
  const be = ts[0]!.backend;
  for (const t of ts) {
    if (t.backend !== be)
      throw new Error(
        `${op}: tensors live on different backends (${be.name} and ${t.backend.name}); move one with toBackend()`,
      );
  }
  return be;
}

function shapeEq(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/**
 * Activation quantization (DeepSeek's `act_quant`): x [..., C] in 1 x block tiles along the last
 * (channel) axis → q (fp8-e4m3, same shape) and scales f32 [..., ceil(C/block)].
 * Non-finite input: the CPU throws a RangeError; see `checkFp8Errors` for WebGPU.
 */
export function quantizeActivationT(x: Tensor, opts: QuantizeOptions = {}): QuantizedTensor {
  const op = 'quantizeActivationT';
  const a = quantAttrs(op, opts);
  const xf = asF32(op, x);
  if (xf.ndim < 1) throw new RangeError(`${op}: x must have at least one dimension, got a scalar`);
  const [q, scales] = exec(FP8_OPS.quantizeAct, [xf.detach()], a);
  return { q: q!, scales: scales! };
}

/**
 * 128 x 1 (block x 1) quantization of x [R, C] along its rows (tokens), returned transposed as an
 * NT GEMM operand: q fp8-e4m3 [C, R], scales f32 [C, ceil(R/block)] — the Wgrad operands of
 * DeepSeek's FP8 recipe. Equals quantizeActivationT of x^T.
 */
export function quantizeActivationTransposedT(x: Tensor, opts: QuantizeOptions = {}): QuantizedTensor {
  const op = 'quantizeActivationTransposedT';
  const a = quantAttrs(op, opts);
  const xf = asF32(op, x);
  if (xf.ndim !== 2) throw new RangeError(`${op}: x must be 2-D [rows, cols], got ${fmt(xf.shape)}`);
  const [q, scales] = exec(FP8_OPS.quantizeActT, [xf.detach()], a);
  return { q: q!, scales: scales! };
}

/**
 * Weight quantization: w [out, in] in block x block tiles → q fp8-e4m3 [out, in] and scales f32
 * [ceil(out/block), ceil(in/block)] (a checkpoint's `weight` and `weight_scale_inv`).
 */
export function quantizeWeightT(w: Tensor, opts: QuantizeOptions = {}): QuantizedTensor {
  const op = 'quantizeWeightT';
  const a = quantAttrs(op, opts);
  const wf = asF32(op, w);
  if (wf.ndim !== 2) throw new RangeError(`${op}: w must be 2-D [out, in], got ${fmt(wf.shape)}`);
  const [q, scales] = exec(FP8_OPS.quantizeWeight, [wf.detach()], a);
  return { q: q!, scales: scales! };
}

/** decode(q) * scale of its 1 x block tile → f32 of q's shape. */
export function dequantizeActivationT(q: Tensor, scales: Tensor, opts: { block?: number } = {}): Tensor {
  const op = 'dequantizeActivationT';
  const block = blockOf(op, opts.block);
  requireFp8(op, 'q', q);
  requireF32(op, 'scales', scales);
  sameBackend(op, [q, scales]);
  if (q.ndim < 1) throw new RangeError(`${op}: q must have at least one dimension`);
  const want = [...q.shape.slice(0, -1), Math.ceil(q.shape[q.ndim - 1]! / block)];
  if (!shapeEq(scales.shape, want)) {
    throw new RangeError(
      `${op}: scales have shape ${fmt(scales.shape)}, expected ${fmt(want)} for q ${fmt(q.shape)} with 1x${block} tiles`,
    );
  }
  const attrs: DequantAttrs = { block };
  return exec(FP8_OPS.dequantizeAct, [q.detach(), scales.detach()], attrs)[0]!;
}

/** decode(q) * scale of its block x block tile → f32 [out, in]. */
export function dequantizeWeightT(q: Tensor, scales: Tensor, opts: { block?: number } = {}): Tensor {
  const op = 'dequantizeWeightT';
  const block = blockOf(op, opts.block);
  requireFp8(op, 'q', q, false);
  requireF32(op, 'scales', scales);
  sameBackend(op, [q, scales]);
  if (q.ndim !== 2) throw new RangeError(`${op}: q must be 2-D [out, in], got ${fmt(q.shape)}`);
  const want = [Math.ceil(q.shape[0]! / block), Math.ceil(q.shape[1]! / block)];
  if (!shapeEq(scales.shape, want)) {
    throw new RangeError(
      `${op}: scales have shape ${fmt(scales.shape)}, expected ${fmt(want)} for q ${fmt(q.shape)} with ${block}x${block} tiles`,
    );
  }
  return exec(FP8_OPS.dequantizeWeight, [q.detach(), scales.detach()], { block } satisfies DequantAttrs)[0]!;
}

export interface BlockGemmTOptions {
  /** Block size of the scales (default 128). */
  block?: number;
  /** 'block' (default): bScale [ceil(N/block), kb] (weights); 'row': bScale [N, kb] (1 x block tiles). */
  bScaleLayout?: BScaleLayout;
  /** CPU: use the exact reference kernel (f64 per-block sums) instead of the fast sgemm path. */
  exact?: boolean;
  /** WebGPU: tile and path choices (tests and benchmarks); the defaults suit every device. */
  webgpu?: GemmRunOptions;
}

/**
 * Block-scaled FP8 GEMM, NT: C [..., N] (f32) = dequant(a) · dequant(b)^T with per-block promotion.
 *   a      fp8 [..., K]          aScale f32 [..., ceil(K/128)]      (1 x 128 tiles)
 *   b      fp8 [N, K]            bScale f32 [ceil(N/128), ceil(K/128)] (128 x 128 tiles; 'row': [N, ceil(K/128)])
 * K and N need not be multiples of 128 (ragged last blocks) on any backend.
 */
export function fp8GemmBlockScaledT(
  a: Tensor,
  aScale: Tensor,
  b: Tensor,
  bScale: Tensor,
  opts: BlockGemmTOptions = {},
): Tensor {
  const op = 'fp8GemmBlockScaledT';
  const block = blockOf(op, opts.block);
  const bScaleLayout = opts.bScaleLayout ?? 'block';
  if (bScaleLayout !== 'block' && bScaleLayout !== 'row')
    throw new RangeError(`${op}: bScaleLayout must be 'block' or 'row', got ${JSON.stringify(bScaleLayout)}`);
  requireFp8(op, 'a', a);
  requireFp8(op, 'b', b);
  requireF32(op, 'aScale', aScale);
  requireF32(op, 'bScale', bScale);
  sameBackend(op, [a, aScale, b, bScale]);
  if (a.ndim < 1) throw new RangeError(`${op}: a must have at least one dimension`);
  if (b.ndim !== 2) throw new RangeError(`${op}: b must be 2-D [N, K], got ${fmt(b.shape)}`);
  const k = a.shape[a.ndim - 1]!;
  const [n, kb] = [b.shape[0]!, b.shape[1]!];
  if (kb !== k)
    throw new RangeError(
      `${op}: inner dimensions differ: a ${fmt(a.shape)} has K = ${k}, b ${fmt(b.shape)} has K = ${kb} (b is [N, K], NT layout)`,
    );
  const kBlocks = Math.ceil(k / block);
  const lead = a.shape.slice(0, -1);
  const wantA = [...lead, kBlocks];
  if (!shapeEq(aScale.shape, wantA)) {
    throw new RangeError(
      `${op}: aScale has shape ${fmt(aScale.shape)}, expected ${fmt(wantA)} ([..., ceil(K/${block})]) for a ${fmt(a.shape)}`,
    );
  }
  const wantB = bScaleLayout === 'row' ? [n, kBlocks] : [Math.ceil(n / block), kBlocks];
  if (!shapeEq(bScale.shape, wantB)) {
    const desc = bScaleLayout === 'row' ? `[N, ceil(K/${block})]` : `[ceil(N/${block}), ceil(K/${block})]`;
    throw new RangeError(
      `${op}: bScale has shape ${fmt(bScale.shape)}, expected ${fmt(wantB)} (${desc}, bScaleLayout '${bScaleLayout}') for b ${fmt(b.shape)}`,
    );
  }
  const m = lead.reduce((p, d) => p * d, 1);
  const attrs: GemmAttrs = { block, bScaleLayout, exact: opts.exact ?? false, webgpu: opts.webgpu };
  const flat = (t: Tensor, shape: number[]): Tensor => new Tensor(t.backend, t.storage, shape, t.dtype);
  const c = exec(
    FP8_OPS.blockGemm,
    [flat(a, [m, k]), flat(aScale, [m, kBlocks]), b.detach(), bScale.detach()],
    attrs,
  )[0]!;
  return new Tensor(c.backend, c.storage, [...lead, n], 'f32');
}

export interface GroupedGemmTOptions {
  /** Block size of the scales (default 128). */
  block?: number;
  /** CPU: the exact reference kernel per segment instead of the fast sgemm path. */
  exact?: boolean;
  /** WebGPU: where the stacks of the expert weights and scales are kept between calls (see stackOnDevice). */
  cache?: GroupedGemmAttrs['cache'];
}

/**
 * Grouped block-scaled FP8 GEMM over expert segments: rows offsets[e] .. offsets[e + 1] of a
 * (1 x 128 tiles, rows sorted by expert) times expert e's weight (128 x 128 blocks, NT):
 *   a fp8 [N, K], aScale f32 [N, ceil(K/128)], offsets i32 [E + 1] on the same backend (a device
 *   tensor: nothing is read back), weights[e] = { q fp8-e4m3 [O, K], scales f32 [ceil(O/128), ceil(K/128)] }
 * → c f32 [N, O]. Each segment's rows are exactly fp8GemmBlockScaledT of those rows and that weight.
 */
export function fp8GroupedGemmBlockScaledT(
  a: Tensor,
  aScale: Tensor,
  offsets: Tensor,
  weights: readonly QuantizedTensor[],
  opts: GroupedGemmTOptions = {},
): Tensor {
  const op = 'fp8GroupedGemmBlockScaledT';
  const block = blockOf(op, opts.block);
  const E = weights.length;
  if (E === 0) throw new RangeError(`${op}: no expert weights`);
  requireFp8(op, 'a', a);
  requireF32(op, 'aScale', aScale);
  if (a.ndim !== 2) throw new RangeError(`${op}: a must be 2-D [N, K], got ${fmt(a.shape)}`);
  const [n, k] = a.shape as [number, number];
  const kBlocks = Math.ceil(k / block);
  if (!shapeEq(aScale.shape, [n, kBlocks]))
    throw new RangeError(
      `${op}: aScale has shape ${fmt(aScale.shape)}, expected ${fmt([n, kBlocks])} for a ${fmt(a.shape)}`,
    );
  if (!(offsets instanceof Tensor) || offsets.dtype !== 'i32' || !shapeEq(offsets.shape, [E + 1]))
    throw new RangeError(
      `${op}: offsets must be an i32 tensor [${E + 1}] (experts + 1), got ${offsets?.dtype} ${fmt(offsets?.shape ?? [])}`,
    );
  const o = weights[0]!.q.shape[0]!;
  weights.forEach(({ q, scales }, e) => {
    requireFp8(op, `the weight of expert ${e}`, q, false);
    requireF32(op, `the scales of expert ${e}`, scales);
    if (!shapeEq(q.shape, [o, k]))
      throw new RangeError(
        `${op}: the weight of expert ${e} is ${fmt(q.shape)}, expected ${fmt([o, k])} (a is ${fmt(a.shape)})`,
      );
    const want = [Math.ceil(o / block), kBlocks];
    if (!shapeEq(scales.shape, want))
      throw new RangeError(
        `${op}: the scales of expert ${e} are ${fmt(scales.shape)}, expected ${fmt(want)} (${block}x${block} blocks)`,
      );
  });
  sameBackend(op, [a, aScale, offsets, ...weights.flatMap((w) => [w.q, w.scales])]);
  const attrs: GroupedGemmAttrs = { block, exact: opts.exact ?? false, cache: opts.cache };
  return exec(
    FP8_OPS.groupedBlockGemm,
    [
      a.detach(),
      aScale.detach(),
      offsets,
      ...weights.map((w) => w.q.detach()),
      ...weights.map((w) => w.scales.detach()),
    ],
    attrs,
  )[0]!;
}

function checkOffsets(op: string, offsets: Tensor, E: number | null): number {
  if (
    !(offsets instanceof Tensor) ||
    offsets.dtype !== 'i32' ||
    offsets.ndim !== 1 ||
    (E !== null && offsets.shape[0] !== E + 1)
  )
    throw new RangeError(
      `${op}: offsets must be an i32 tensor [${E === null ? 'E + 1' : E + 1}] (experts + 1), got ${offsets?.dtype} ${fmt(offsets?.shape ?? [])}`,
    );
  return offsets.shape[0]! - 1;
}

/**
 * 128 x 1 quantization of x [R, C] along its rows with the tiles restarting at each expert segment
 * (rows offsets[e] .. offsets[e + 1], sorted by expert), transposed as an NT operand: q [C, R] and
 * scales [C, ceil(R/128) + E] — segment e's tiles are quantizeActivationTransposedT of its own rows,
 * their scales from column floor(offsets[e] / 128) + e on. The Wgrad operands of the routed experts.
 */
export function groupedQuantizeActivationTransposedT(
  x: Tensor,
  offsets: Tensor,
  opts: QuantizeOptions = {},
): QuantizedTensor {
  const op = 'groupedQuantizeActivationTransposedT';
  const a = quantAttrs(op, opts);
  const xf = asF32(op, x);
  if (xf.ndim !== 2) throw new RangeError(`${op}: x must be 2-D [rows, cols], got ${fmt(xf.shape)}`);
  checkOffsets(op, offsets, null);
  sameBackend(op, [xf, offsets]);
  const [q, scales] = exec(FP8_OPS.groupedQuantizeActT, [xf.detach(), offsets], a);
  return { q: q!, scales: scales! };
}

/**
 * The routed experts' weight gradients dW_e [O, K] = g_segᵀ · x_seg in FP8 from gT = grouped 128x1
 * quantization of g [R, O] and xT = that of x [R, K] (groupedQuantizeActivationTransposedT, same
 * offsets), one per listed expert (zeros where the segment is empty).
 */
export function fp8GroupedWgradT(
  gT: QuantizedTensor,
  xT: QuantizedTensor,
  offsets: Tensor,
  experts: readonly number[],
  opts: { block?: number; exact?: boolean } = {},
): Tensor[] {
  const op = 'fp8GroupedWgradT';
  const block = blockOf(op, opts.block);
  const E = checkOffsets(op, offsets, null);
  for (const [what, t] of [
    ['gT', gT],
    ['xT', xT],
  ] as const) {
    requireFp8(op, `${what}.q`, t.q, false);
    requireF32(op, `${what}.scales`, t.scales);
    if (t.q.ndim !== 2) throw new RangeError(`${op}: ${what}.q must be 2-D [features, rows], got ${fmt(t.q.shape)}`);
    const want = [t.q.shape[0]!, Math.ceil(t.q.shape[1]! / block) + E];
    if (!shapeEq(t.scales.shape, want))
      throw new RangeError(
        `${op}: ${what}.scales are ${fmt(t.scales.shape)}, expected ${fmt(want)} (the grouped 128x1 layout)`,
      );
  }
  if (gT.q.shape[1] !== xT.q.shape[1])
    throw new RangeError(`${op}: gT covers ${gT.q.shape[1]} rows, xT ${xT.q.shape[1]}`);
  for (const e of experts)
    if (!Number.isInteger(e) || e < 0 || e >= E) throw new RangeError(`${op}: expert ${e} is not in [0, ${E})`);
  sameBackend(op, [gT.q, gT.scales, xT.q, xT.scales, offsets]);
  if (experts.length === 0) return [];
  const attrs: GroupedWgradAttrs = { block, experts, exact: opts.exact ?? false };
  return exec(FP8_OPS.groupedWgradGemm, [gT.q, gT.scales, xT.q, xT.scales, offsets], attrs);
}
