// Fine-grained FP8 (E4M3) quantization, as DeepSeek-V3 does it.
//
// - Activations: per token, per group of `block` (128) contiguous channels — a 1 x 128 tile —
//   one scale each. This is `act_quant` of DeepSeek's inference/kernel.py:
//       amax = max(max|x|, 1e-4)            (f32)
//       s    = amax * f32(1/448)            (f32; see ACTIVATION SCALE below)
//       s    = 2^ceil(log2 s)               (only with scaleFormat 'ue8m0', V3.1's format)
//       q    = e4m3(x / s)                  (f32 division, correctly rounded; saturating encode)
// - Weights: 128 x 128 blocks (128 output x 128 input channels), `s = max(amax, 1e-4) / 448` with a
//   correctly rounded f32 division, q = e4m3(w / s). Checkpoints store q as `weight` and s as
//   `weight_scale_inv` with shape [ceil(out/128), ceil(in/128)].
// - Backward: the cached activation is re-quantized from 1 x 128 tiles to 128 x 1 tiles (one scale
//   per 128-row block and column), so that Wgrad = dY^T X can contract over tokens with scales
//   along the contraction axis: `quantizeActivationColumnwise` / `quantizeActivationTransposed`.
//
// Decisions (checked bit-exactly against the `k.act_quant*` and `k.gemm.*` goldens produced by
// DeepSeek's Triton kernel and a reference block quantizer):
//
// ACTIVATION SCALE. The Triton kernel writes `amax / 448.`, but what it computes is
// `amax * f32(1/448)`: that reproduces all 256 + 256 + 1024 golden activation scales, whereas the
// correctly rounded division matches only 126 of 256. WEIGHT SCALE: the opposite — the golden weight
// scales (12 + 64 blocks) are the correctly rounded `amax / 448`, and `amax * f32(1/448)` matches
// only some. Each quantizer uses the rule its goldens show.
//
// x / s VERSUS x * (1/s). In f32 the two differ for about a quarter of the golden elements, but the
// final rounding to 3 mantissa bits absorbs every difference: both reproduce every golden byte. We
// compute `f32(x / s)` — what the kernel source says, and the better-rounded choice.
//
// FLOOR. amax is floored at f32(1e-4) for activations *and* weights (`amaxFloor` option), so an all-zero
// block gets a small positive scale and all-zero bytes instead of 0/0.
//
// UE8M0. `2^ceil(log2 s)` is computed exactly from the f32 bits of s (no log2 rounding): a scale
// that is already a power of two is kept, anything above it goes up to the next power of two.
//
// RAGGED BLOCKS. DeepSeek's kernels require the quantized dimension to be a multiple of 128; here the
// last block of a dimension may be shorter and is quantized with its own amax like any other block.
//
// NON-FINITE INPUT. NaN or ±Infinity in the input throws a RangeError naming the first offending
// element: a single one would otherwise turn the scale of its whole block into NaN/Inf silently.
//
// The encode is saturating (|x/s| can exceed 448 by an f32 rounding step): see EncodeOptions.
import { quantizeE4M3TilesNative } from '@dsv3/core';
import { E4M3_LUT, encodeE4M3Array } from './codec/e4m3';
import { f32Scratch, u32Scratch } from './codec/common';

export type ScaleFormat = 'fp32' | 'ue8m0';

export interface QuantizeOptions {
  /** Elements per block along each quantized dimension (default 128). */
  block?: number;
  /** 'fp32' (default): s = amax/448; 'ue8m0': s rounded up to a power of two. */
  scaleFormat?: ScaleFormat;
  /** amax is floored at this value before computing the scale (default f32(1e-4); must be > 0). */
  amaxFloor?: number;
}

export interface Quantized {
  /** E4M3 bytes. */
  q: Uint8Array;
  /** f32 scales (dequantized value = decode(q) * scale of its block). */
  scales: Float32Array;
  /** Shape of q. */
  shape: number[];
  /** Shape of scales. */
  scaleShape: number[];
}

const E4M3_MAX = 448;
const INV_448_F32 = Math.fround(1 / 448);
const DEFAULT_FLOOR = Math.fround(1e-4);

// ---- validation helpers ----

function checkBlock(block: number | undefined): number {
  const b = block ?? 128;
  if (!Number.isInteger(b) || b < 1) throw new RangeError(`block must be a positive integer, got ${b}`);
  return b;
}

function checkFloor(f: number | undefined): number {
  const v = f === undefined ? DEFAULT_FLOOR : Math.fround(f);
  if (!(v > 0) || !Number.isFinite(v)) throw new RangeError(`amaxFloor must be a positive finite number, got ${f}`);
  return v;
}

function checkScaleFormat(f: ScaleFormat | undefined): boolean {
  if (f === undefined || f === 'fp32') return false;
  if (f === 'ue8m0') return true;
  throw new RangeError(`scaleFormat must be 'fp32' or 'ue8m0', got ${JSON.stringify(f)}`);
}

/** Validates a shape against a length; returns the element count. */
export function checkShape(what: string, shape: readonly number[], length: number): number {
  if (!Array.isArray(shape) || shape.length === 0)
    throw new RangeError(`${what}: shape must be a non-empty array, got ${JSON.stringify(shape)}`);
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0)
      throw new RangeError(`${what}: bad dimension ${d} in shape [${shape.join(', ')}]`);
    n *= d;
  }
  if (n !== length)
    throw new RangeError(`${what}: shape [${shape.join(', ')}] holds ${n} elements but the array has ${length}`);
  return n;
}

/** [rows, cols] of a [..., cols] shape (rows = product of the leading dimensions, 1 for 1-D). */
function rowsCols(shape: readonly number[]): [number, number] {
  const cols = shape[shape.length - 1]!;
  let rows = 1;
  for (let i = 0; i < shape.length - 1; i++) rows *= shape[i]!;
  return [rows, cols];
}

/** The quantizer options, validated in a fixed order: block, scaleFormat, amaxFloor. */
function checkQuantizeOptions(opts: QuantizeOptions): { block: number; ue8m0: boolean; floor: number } {
  const block = checkBlock(opts.block);
  const ue8m0 = checkScaleFormat(opts.scaleFormat);
  const floor = checkFloor(opts.amaxFloor);
  return { block, ue8m0, floor };
}

/**
 * Validates a dequantizer's arguments (shape, block, bytes, then the `grid(rows, cols, block)`
 * scales); returns the element count, block and [rows, cols] view.
 */
function checkDequantizeArgs(
  what: string,
  q: Uint8Array,
  scales: Float32Array,
  shape: readonly number[],
  opts: { block?: number },
  grid: (rows: number, cols: number, block: number) => number,
): { n: number; block: number; rows: number; cols: number } {
  const n = checkShape(what, shape, q.length);
  const block = checkBlock(opts.block);
  const [rows, cols] = rowsCols(shape);
  checkBytes(what, q, n);
  checkScales(what, scales, grid(rows, cols, block));
  return { n, block, rows, cols };
}

function checkFloatInput(what: string, x: unknown): asserts x is Float32Array {
  if (!(x instanceof Float32Array)) throw new TypeError(`${what}: expected a Float32Array`);
}

function checkBytes(what: string, q: unknown, n: number): asserts q is Uint8Array {
  if (!(q instanceof Uint8Array)) throw new TypeError(`${what}: expected a Uint8Array of FP8 bytes`);
  if (q.length !== n) throw new RangeError(`${what}: ${q.length} bytes, shape needs ${n}`);
}

function checkScales(what: string, s: unknown, n: number): asserts s is Float32Array {
  if (!(s instanceof Float32Array)) throw new TypeError(`${what}: expected a Float32Array of scales`);
  if (s.length !== n) throw new RangeError(`${what}: ${s.length} scales, expected ${n}`);
}

function nonFinite(what: string, x: Float32Array, from: number, to: number, stride = 1): never {
  for (let i = from; i < to; i += stride) {
    if (!Number.isFinite(x[i]!)) throw new RangeError(`${what}: non-finite input ${x[i]} at flat index ${i}`);
  }
  throw new RangeError(`${what}: non-finite input`);
}

// ---- scales ----

/** 2^ceil(log2 s) for a positive finite f32 s, exactly (from its bits). */
export function ue8m0Ceil(s: number): number {
  f32Scratch[0] = s;
  const u = u32Scratch[0]!;
  const e = (u >>> 23) & 0xff;
  const m = u & 0x7fffff;
  if (e === 0) {
    // subnormal: s = m * 2^-149; next power of two at or above it
    return 2 ** (Math.ceil(Math.log2(m)) - 149);
  }
  return 2 ** (e - 127 + (m === 0 ? 0 : 1));
}

/** The activation scale of a block from its amax (DeepSeek act_quant's arithmetic). */
export function activationScale(amax: number, scaleFormat: ScaleFormat = 'fp32', amaxFloor = DEFAULT_FLOOR): number {
  const a = Math.fround(Math.max(Math.fround(amax), Math.fround(amaxFloor)));
  const s = Math.fround(a * INV_448_F32);
  return scaleFormat === 'ue8m0' ? ue8m0Ceil(s) : s;
}

/** activationScale for an f32 amax and a validated floor, inline in the quantizer loops. */
function actScale(amax: number, floor: number, ue8m0: boolean): number {
  const s = Math.fround(Math.max(amax, floor) * INV_448_F32);
  return ue8m0 ? ue8m0Ceil(s) : s;
}

/** The weight scale of a block from its amax (correctly rounded amax / 448 in f32). */
export function weightScale(amax: number, scaleFormat: ScaleFormat = 'fp32', amaxFloor = DEFAULT_FLOOR): number {
  const a = Math.fround(Math.max(Math.fround(amax), Math.fround(amaxFloor)));
  const s = Math.fround(a / E4M3_MAX);
  return scaleFormat === 'ue8m0' ? ue8m0Ceil(s) : s;
}

// ---- activations: 1 x block tiles ----

/**
 * Quantizes activations `x` of shape [..., cols] per row in 1 x `block` tiles.
 * Returns q (same shape, E4M3 bytes) and scales of shape [rows, ceil(cols/block)]
 * (rows = product of the leading dimensions).
 */
export function quantizeActivation(x: Float32Array, shape: readonly number[], opts: QuantizeOptions = {}): Quantized {
  return quantizeActivationWith(x, shape, opts, true);
}

/** quantizeActivation always in JavaScript (the reference its native path is tested against). */
export function quantizeActivationJs(x: Float32Array, shape: readonly number[], opts: QuantizeOptions = {}): Quantized {
  return quantizeActivationWith(x, shape, opts, false);
}

function quantizeActivationWith(
  x: Float32Array,
  shape: readonly number[],
  opts: QuantizeOptions,
  native: boolean,
): Quantized {
  checkFloatInput('quantizeActivation', x);
  checkShape('quantizeActivation', shape, x.length);
  const { block, ue8m0, floor } = checkQuantizeOptions(opts);
  const [rows, cols] = rowsCols(shape);
  const nb = Math.ceil(cols / block);
  const q = new Uint8Array(x.length);
  const scales = new Float32Array(rows * nb);
  // core's AVX-512 version of the loops below (their bits); a non-finite input falls through to them
  if (native && !ue8m0 && quantizeE4M3TilesNative(x, rows, cols, 1, block, floor, 'activation', q, scales) === true)
    return { q, scales, shape: [...shape], scaleShape: [rows, nb] };
  const tmp = new Float32Array(cols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let b = 0; b < nb; b++) {
      const j0 = base + b * block;
      const j1 = Math.min(j0 + block, base + cols);
      let amax = 0;
      for (let i = j0; i < j1; i++) {
        const v = x[i]!;
        const a = v < 0 ? -v : v;
        if (a > amax) amax = a;
      }
      if (amax === Infinity) nonFinite('quantizeActivation', x, j0, j1);
      const s = actScale(amax, floor, ue8m0);
      scales[r * nb + b] = s;
      // f32 stores round the double quotient, which equals the correctly rounded f32 quotient.
      for (let i = j0; i < j1; i++) {
        const v = x[i]!;
        if (v !== v) nonFinite('quantizeActivation', x, j0, j1);
        tmp[i - base] = v / s;
      }
    }
    encodeE4M3Array(tmp, {}, q.subarray(base, base + cols));
  }
  return { q, scales, shape: [...shape], scaleShape: [rows, nb] };
}

/** Inverse of quantizeActivation: decode(q) * scale of its 1 x block tile, as f32. */
export function dequantizeActivation(
  q: Uint8Array,
  scales: Float32Array,
  shape: readonly number[],
  opts: { block?: number } = {},
): Float32Array {
  const { n, block, rows, cols } = checkDequantizeArgs(
    'dequantizeActivation',
    q,
    scales,
    shape,
    opts,
    (r, c, b) => r * Math.ceil(c / b),
  );
  const nb = Math.ceil(cols / block);
  const out = new Float32Array(n);
  const lut = E4M3_LUT;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let b = 0; b < nb; b++) {
      const s = scales[r * nb + b]!;
      const j1 = Math.min(base + (b + 1) * block, base + cols);
      for (let i = base + b * block; i < j1; i++) out[i] = lut[q[i]!]! * s;
    }
  }
  return out;
}

// ---- weights: block x block tiles ----

/**
 * Quantizes a weight [out, in] in `block` x `block` tiles (128 x 128 by default): the layout of
 * DeepSeek-V3's checkpoints (`weight` + `weight_scale_inv` of shape [ceil(out/128), ceil(in/128)]).
 * `out` and `in` need not be multiples of the block.
 */
export function quantizeWeight(
  w: Float32Array,
  shape: readonly [number, number] | readonly number[],
  opts: QuantizeOptions = {},
  /** Where to write the codes and scales (e.g. storage that stays where kernels read it), instead of new arrays. */
  out?: { q: Uint8Array; scales: Float32Array },
): Quantized {
  return quantizeWeightWith(w, shape, opts, true, out);
}

/** quantizeWeight always in JavaScript (the reference its native path is tested against). */
export function quantizeWeightJs(
  w: Float32Array,
  shape: readonly [number, number] | readonly number[],
  opts: QuantizeOptions = {},
): Quantized {
  return quantizeWeightWith(w, shape, opts, false);
}

function quantizeWeightWith(
  w: Float32Array,
  shape: readonly [number, number] | readonly number[],
  opts: QuantizeOptions,
  native: boolean,
  out?: { q: Uint8Array; scales: Float32Array },
): Quantized {
  checkFloatInput('quantizeWeight', w);
  if (shape.length !== 2) throw new RangeError(`quantizeWeight: shape must be [out, in], got [${shape.join(', ')}]`);
  checkShape('quantizeWeight', shape, w.length);
  const { block, ue8m0, floor } = checkQuantizeOptions(opts);
  const rows = shape[0]!;
  const cols = shape[1]!;
  const rb = Math.ceil(rows / block);
  const cb = Math.ceil(cols / block);
  if (out && (!(out.q instanceof Uint8Array) || out.q.length !== w.length))
    throw new RangeError(`quantizeWeight: out.q must be a Uint8Array of ${w.length} bytes`);
  if (out && (!(out.scales instanceof Float32Array) || out.scales.length !== rb * cb))
    throw new RangeError(`quantizeWeight: out.scales must be a Float32Array of ${rb * cb} scales`);
  const scales = out?.scales ?? new Float32Array(rb * cb);
  const q = out?.q ?? new Uint8Array(w.length);
  // core's AVX-512 version of the loops below (their bits; FP8 loads quantize every projection); a
  // non-finite input (false) falls through to them for the error naming it
  if (native && !ue8m0 && quantizeE4M3TilesNative(w, rows, cols, block, block, floor, 'weight', q, scales) === true)
    return { q, scales, shape: [rows, cols], scaleShape: [rb, cb] };
  const amax = new Float64Array(cb);
  const tmp = new Float32Array(cols);
  for (let bi = 0; bi < rb; bi++) {
    const r0 = bi * block;
    const r1 = Math.min(r0 + block, rows);
    amax.fill(0);
    for (let r = r0; r < r1; r++) {
      const base = r * cols;
      for (let bj = 0; bj < cb; bj++) {
        let m = amax[bj]!;
        const j1 = Math.min(base + (bj + 1) * block, base + cols);
        for (let i = base + bj * block; i < j1; i++) {
          const v = w[i]!;
          const a = v < 0 ? -v : v;
          if (a > m) m = a;
          else if (v !== v) nonFinite('quantizeWeight', w, i, i + 1);
        }
        amax[bj] = m;
      }
    }
    for (let bj = 0; bj < cb; bj++) {
      const m = amax[bj]!;
      if (m === Infinity) nonFinite('quantizeWeight', w, r0 * cols, r1 * cols);
      let s = Math.fround(Math.fround(Math.max(m, floor)) / E4M3_MAX);
      if (ue8m0) s = ue8m0Ceil(s);
      scales[bi * cb + bj] = s;
    }
    for (let r = r0; r < r1; r++) {
      const base = r * cols;
      for (let bj = 0; bj < cb; bj++) {
        const s = scales[bi * cb + bj]!;
        const j0 = bj * block;
        const j1 = Math.min(j0 + block, cols);
        for (let j = j0; j < j1; j++) tmp[j] = w[base + j]! / s;
      }
      encodeE4M3Array(tmp, {}, q.subarray(base, base + cols));
    }
  }
  return { q, scales, shape: [rows, cols], scaleShape: [rb, cb] };
}

/** Inverse of quantizeWeight: W[i, j] = decode(q[i, j]) * S[i / block, j / block], as f32. */
export function dequantizeWeight(
  q: Uint8Array,
  scales: Float32Array,
  shape: readonly [number, number] | readonly number[],
  opts: { block?: number } = {},
): Float32Array {
  if (shape.length !== 2) throw new RangeError(`dequantizeWeight: shape must be [out, in], got [${shape.join(', ')}]`);
  const { n, block, rows, cols } = checkDequantizeArgs(
    'dequantizeWeight',
    q,
    scales,
    shape,
    opts,
    (r, c, b) => Math.ceil(r / b) * Math.ceil(c / b),
  );
  const cb = Math.ceil(cols / block);
  const out = new Float32Array(n);
  const lut = E4M3_LUT;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const srow = ((r / block) | 0) * cb;
    for (let bj = 0; bj < cb; bj++) {
      const s = scales[srow + bj]!;
      const j1 = Math.min(base + (bj + 1) * block, base + cols);
      for (let i = base + bj * block; i < j1; i++) out[i] = lut[q[i]!]! * s;
    }
  }
  return out;
}

// ---- backward: block x 1 tiles ----

/**
 * Quantizes x of shape [..., cols] (viewed as [rows, cols]) in `block` x 1 tiles: one scale per
 * (block of `block` rows, column), with the activation scale rule. q keeps the layout of x; scales
 * have shape [ceil(rows/block), cols]. This is the 128 x 1 re-quantization of cached activations
 * (and of output gradients) used by the Wgrad GEMM in DeepSeek-V3's FP8 training recipe.
 */
export function quantizeActivationColumnwise(
  x: Float32Array,
  shape: readonly number[],
  opts: QuantizeOptions = {},
): Quantized {
  return quantizeActivationColumnwiseWith(x, shape, opts, true);
}

/** quantizeActivationColumnwise always in JavaScript (the reference its native path is tested against). */
export function quantizeActivationColumnwiseJs(
  x: Float32Array,
  shape: readonly number[],
  opts: QuantizeOptions = {},
): Quantized {
  return quantizeActivationColumnwiseWith(x, shape, opts, false);
}

function quantizeActivationColumnwiseWith(
  x: Float32Array,
  shape: readonly number[],
  opts: QuantizeOptions,
  native: boolean,
): Quantized {
  checkFloatInput('quantizeActivationColumnwise', x);
  checkShape('quantizeActivationColumnwise', shape, x.length);
  const { block, ue8m0, floor } = checkQuantizeOptions(opts);
  const [rows, cols] = rowsCols(shape);
  const rb = Math.ceil(rows / block);
  const q = new Uint8Array(x.length);
  const scales = new Float32Array(rb * cols);
  // core's AVX-512 version of the loops below (their bits); a non-finite input falls through to them
  if (native && !ue8m0 && quantizeE4M3TilesNative(x, rows, cols, block, 1, floor, 'activation', q, scales) === true)
    return { q, scales, shape: [...shape], scaleShape: [rb, cols] };
  const amax = new Float64Array(cols);
  const tmp = new Float32Array(cols);
  for (let bi = 0; bi < rb; bi++) {
    const r0 = bi * block;
    const r1 = Math.min(r0 + block, rows);
    amax.fill(0);
    for (let r = r0; r < r1; r++) {
      const base = r * cols;
      for (let j = 0; j < cols; j++) {
        const v = x[base + j]!;
        const a = v < 0 ? -v : v;
        if (a > amax[j]!) amax[j] = a;
        else if (v !== v) nonFinite('quantizeActivationColumnwise', x, base + j, base + j + 1);
      }
    }
    const srow = scales.subarray(bi * cols, (bi + 1) * cols);
    for (let j = 0; j < cols; j++) {
      const m = amax[j]!;
      if (m === Infinity) nonFinite('quantizeActivationColumnwise', x, r0 * cols + j, r1 * cols, cols);
      srow[j] = actScale(m, floor, ue8m0);
    }
    for (let r = r0; r < r1; r++) {
      const base = r * cols;
      for (let j = 0; j < cols; j++) tmp[j] = x[base + j]! / srow[j]!;
      encodeE4M3Array(tmp, {}, q.subarray(base, base + cols));
    }
  }
  return { q, scales, shape: [...shape], scaleShape: [rb, cols] };
}

/** Inverse of quantizeActivationColumnwise. */
export function dequantizeActivationColumnwise(
  q: Uint8Array,
  scales: Float32Array,
  shape: readonly number[],
  opts: { block?: number } = {},
): Float32Array {
  const { n, block, rows, cols } = checkDequantizeArgs(
    'dequantizeActivationColumnwise',
    q,
    scales,
    shape,
    opts,
    (r, c, b) => Math.ceil(r / b) * c,
  );
  const out = new Float32Array(n);
  const lut = E4M3_LUT;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const sbase = ((r / block) | 0) * cols;
    for (let j = 0; j < cols; j++) out[base + j] = lut[q[base + j]!]! * scales[sbase + j]!;
  }
  return out;
}

/** Transposes a row-major [rows, cols] byte or f32 matrix. */
export function transpose2d<T extends Uint8Array | Float32Array>(src: T, rows: number, cols: number): T {
  const out = new (src.constructor as new (n: number) => T)(rows * cols);
  const TILE = 32;
  for (let r0 = 0; r0 < rows; r0 += TILE) {
    const r1 = Math.min(r0 + TILE, rows);
    for (let c0 = 0; c0 < cols; c0 += TILE) {
      const c1 = Math.min(c0 + TILE, cols);
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) out[c * rows + r] = src[r * cols + c]!;
    }
  }
  return out;
}

/**
 * 128 x 1 quantization of x [rows, cols], returned transposed as an NT GEMM operand: q is
 * [cols, rows] and scales [cols, ceil(rows/block)] — exactly quantizeActivation of x^T. Feed it as
 * the `b` (or `a`) operand of fp8GemmBlockScaled to contract over rows (tokens), e.g. Wgrad.
 */
export function quantizeActivationTransposed(
  x: Float32Array,
  shape: readonly number[],
  opts: QuantizeOptions = {},
): Quantized {
  const r = quantizeActivationColumnwise(x, shape, opts);
  const [rows, cols] = rowsCols(shape);
  const rb = Math.ceil(rows / checkBlock(opts.block));
  return {
    q: transpose2d(r.q, rows, cols),
    scales: transpose2d(r.scales, rb, cols),
    shape: [cols, rows],
    scaleShape: [cols, rb],
  };
}

/**
 * Re-quantizes an activation cached as 1 x block FP8 tiles (q, scales from quantizeActivation) into
 * block x 1 tiles, as the backward pass does with the activations it saved in FP8: dequantize, then
 * quantizeActivationColumnwise.
 */
export function requantizeColumnwise(
  q: Uint8Array,
  scales: Float32Array,
  shape: readonly number[],
  opts: QuantizeOptions = {},
): Quantized {
  const x = dequantizeActivation(q, scales, shape, { block: opts.block });
  return quantizeActivationColumnwise(x, shape, opts);
}
