// Fast paths of the primitive CPU kernels for the layouts a training step hits most: f32/f64
// elementwise ops on equal shapes, against a scalar, a trailing-axes operand (a bias, a norm weight)
// or a per-row value (keepdims reductions); pads and strided copies of short rows; creation kernels
// without a float64 detour. Anything else falls through to the general kernel, which they equal.
import type { Backend, KernelTensor } from '../backend.js';
import { allocStorageArray } from '../dtype.js';
import type { BinaryOp, KernelAttrs } from '../kernel-types.js';
import { broadcastShapes, sizeOf, splitAt, stridesOf, type Shape } from '../shape.js';
import { arithF32, type ArithOp, fillF32 } from './arith-simd.js';
import { siluInto } from './gated-simd.js';
import { raw, wrap } from './backend.js';
import { binaryKernel, forEachRow, unaryKernel } from './elementwise.js';
import { fullKernel, iotaKernel, padKernel, stridedKernel } from './indexing.js';
import { takeF32 } from './pool.js';

type F = Float32Array | Float64Array;
const isFloatStore = (t: KernelTensor): boolean => t.dtype === 'f32' || t.dtype === 'f64';

/**
 * o[oo+i] = a[ao+i*as] op b[bo+i*bs] for i < n; f32 results round once from the exact f64 value (long
 * f32 rows in SIMD lanes, which round the same way).
 */
function arithRow(
  op: BinaryOp,
  a: F,
  ao: number,
  as: number,
  b: F,
  bo: number,
  bs: number,
  o: F,
  oo: number,
  n: number,
) {
  if (
    o instanceof Float32Array &&
    arithF32(op as ArithOp, a as Float32Array, ao, as, b as Float32Array, bo, bs, o, oo, n)
  )
    return true;
  switch (op) {
    case 'add':
      for (let i = 0; i < n; i++) o[oo + i] = a[ao + i * as]! + b[bo + i * bs]!;
      return true;
    case 'sub':
      for (let i = 0; i < n; i++) o[oo + i] = a[ao + i * as]! - b[bo + i * bs]!;
      return true;
    case 'mul':
      for (let i = 0; i < n; i++) o[oo + i] = a[ao + i * as]! * b[bo + i * bs]!;
      return true;
    case 'div':
      for (let i = 0; i < n; i++) o[oo + i] = a[ao + i * as]! / b[bo + i * bs]!;
      return true;
    default:
      return false;
  }
}

/** `small` (after dropping leading 1s) equals the trailing axes of `big`: it repeats every sizeOf(small). */
function isTrailing(small: Shape, big: Shape): boolean {
  let s = 0;
  while (s < small.length && small[s] === 1) s++;
  const k = small.length - s;
  if (k > big.length) return false;
  for (let i = 0; i < k; i++) if (small[s + i] !== big[big.length - k + i]) return false;
  return true;
}

/** `small` is `big` with its last axis 1 (leading 1s allowed): one value per row of `big`. */
function isPerRow(small: Shape, big: Shape): boolean {
  if (!small.length || small[small.length - 1] !== 1 || big.length < 1) return false;
  return isTrailing(small.slice(0, -1), big.slice(0, -1)) && sizeOf(small) * big[big.length - 1]! === sizeOf(big);
}

export function binaryKernelFast(be: Backend, inputs: KernelTensor[], attrs: KernelAttrs['binary']): KernelTensor[] {
  const [a, b] = inputs as [KernelTensor, KernelTensor];
  const { op } = attrs;
  if (!isFloatStore(a) || a.dtype !== b.dtype || !['add', 'sub', 'mul', 'div'].includes(op))
    return binaryKernel(be, inputs, attrs);
  const shape = broadcastShapes(a.shape, b.shape);
  const size = sizeOf(shape);
  const av = raw(a) as F;
  const bv = raw(b) as F;
  const out = a.dtype === 'f32' ? takeF32(size) : new Float64Array(size);
  const n = shape.length ? shape[shape.length - 1]! : 1;
  if (av.length === size && bv.length === size) arithRow(op, av, 0, 1, bv, 0, 1, out, 0, size);
  else if (av.length === size && bv.length === 1) arithRow(op, av, 0, 1, bv, 0, 0, out, 0, size);
  else if (bv.length === size && av.length === 1) arithRow(op, av, 0, 0, bv, 0, 1, out, 0, size);
  else if (av.length === size && bv.length > 0 && isTrailing(b.shape, shape))
    for (let o = 0; o < size; o += bv.length) arithRow(op, av, o, 1, bv, 0, 1, out, o, bv.length);
  else if (bv.length === size && av.length > 0 && isTrailing(a.shape, shape))
    for (let o = 0; o < size; o += av.length) arithRow(op, av, 0, 1, bv, o, 1, out, o, av.length);
  else if (av.length === size && n > 0 && isPerRow(b.shape, shape))
    for (let r = 0, o = 0; o < size; r++, o += n) arithRow(op, av, o, 1, bv, r, 0, out, o, n);
  else if (bv.length === size && n > 0 && isPerRow(a.shape, shape))
    for (let r = 0, o = 0; o < size; r++, o += n) arithRow(op, av, r, 0, bv, o, 1, out, o, n);
  else return binaryKernel(be, inputs, attrs);
  return [wrap(a.dtype, shape, out)];
}

export function unaryKernelFast(be: Backend, inputs: KernelTensor[], attrs: KernelAttrs['unary']): KernelTensor[] {
  const x = inputs[0]!;
  if (!isFloatStore(x)) return unaryKernel(be, inputs, attrs);
  const { dtype, shape } = x;
  const v = raw(x) as F;
  const n = v.length;
  const o = dtype === 'f32' ? takeF32(n) : new Float64Array(n);
  switch (attrs.op) {
    case 'sqrt':
      for (let i = 0; i < n; i++) o[i] = Math.sqrt(v[i]!);
      break;
    case 'rsqrt':
      for (let i = 0; i < n; i++) o[i] = 1 / Math.sqrt(v[i]!);
      break;
    case 'exp':
      for (let i = 0; i < n; i++) o[i] = Math.exp(v[i]!);
      break;
    case 'neg':
      for (let i = 0; i < n; i++) o[i] = -v[i]!;
      break;
    case 'square':
      for (let i = 0; i < n; i++) o[i] = v[i]! * v[i]!;
      break;
    case 'sigmoid':
      for (let i = 0; i < n; i++) o[i] = 1 / (1 + Math.exp(-v[i]!));
      break;
    case 'silu':
      // f32: the SIMD pass (vector exp, within a few f32 ulps of the f64 loop; see siluF32)
      if (o instanceof Float32Array) siluInto(v as Float32Array, o);
      else for (let i = 0; i < n; i++) o[i] = v[i]! / (1 + Math.exp(-v[i]!));
      break;
    default:
      return unaryKernel(be, inputs, attrs);
  }
  return [wrap(dtype, shape, o)];
}

/** n elements of `value`; f32 from the free list (filled even with zeros: a recycled array holds stale values). */
function filled(dtype: 'f32' | 'f64' | 'i32', n: number, value: number): F | Int32Array {
  if (dtype === 'f32') return fillF32(takeF32(n), value);
  const out = allocStorageArray(dtype, n) as F | Int32Array;
  return value === 0 ? out : out.fill(value);
}

/** Pads f32/f64/i32 by copying rows into a filled array (no float64 round trip). */
export function padKernelFast(be: Backend, inputs: KernelTensor[], attrs: KernelAttrs['pad']): KernelTensor[] {
  const x = inputs[0]!;
  if (!(isFloatStore(x) || x.dtype === 'i32')) return padKernel(be, inputs, attrs);
  const { before, after, value } = attrs;
  const shape = x.shape.map((d, i) => d + before[i]! + after[i]!);
  const out = filled(x.dtype as 'f32' | 'f64' | 'i32', sizeOf(shape), value);
  const src = raw(x) as F | Int32Array;
  const ostr = stridesOf(shape);
  const start = before.reduce((s, b, d) => s + b * ostr[d]!, 0);
  forEachRow(x.shape, [ostr], (offs, o, n) => {
    const d = start + offs[0]!;
    if (n >= 64) out.set(src.subarray(o, o + n), d);
    else for (let i = 0; i < n; i++) out[d + i] = src[o + i]!;
  });
  return [wrap(x.dtype, shape, out)];
}

/** Strided copies with short rows copied element by element (subarray+set costs more below ~64). */
export function stridedKernelFast(be: Backend, inputs: KernelTensor[], attrs: KernelAttrs['strided']): KernelTensor[] {
  const x = inputs[0]!;
  const { shape, strides, offset } = attrs;
  const n = shape.length ? shape[shape.length - 1]! : 1;
  const inner = strides.length ? strides[strides.length - 1]! : 0;
  if (inner === 1 && n >= 64) return stridedKernel(be, inputs, attrs);
  const src = raw(x);
  const out = x.dtype === 'f32' ? takeF32(sizeOf(shape)) : allocStorageArray(x.dtype, sizeOf(shape));
  forEachRow(shape, [[...strides]], (offs, o, len) => {
    const base = offset + offs[0]!;
    for (let i = 0; i < len; i++) out[o + i] = src[base + i * inner]!;
  });
  return [wrap(x.dtype, shape, out)];
}

export function fullKernelFast(be: Backend, inputs: KernelTensor[], attrs: KernelAttrs['full']): KernelTensor[] {
  const { shape, dtype, value } = attrs;
  if (!(dtype === 'f32' || dtype === 'f64' || dtype === 'i32') || (dtype === 'i32' && !Number.isInteger(value)))
    return fullKernel(be, inputs, attrs);
  return [wrap(dtype, shape, filled(dtype, sizeOf(shape), value))];
}

export function iotaKernelFast(be: Backend, inputs: KernelTensor[], attrs: KernelAttrs['iota']): KernelTensor[] {
  const { shape, axis, dtype } = attrs;
  if (!(dtype === 'f32' || dtype === 'f64' || dtype === 'i32')) return iotaKernel(be, inputs, attrs);
  const [outer, len, inner] = splitAt(shape, axis);
  const out = allocStorageArray(dtype, sizeOf(shape)) as F | Int32Array;
  for (let o = 0; o < outer; o++)
    for (let j = 0; j < len; j++) out.fill(j, (o * len + j) * inner, (o * len + j + 1) * inner);
  return [wrap(dtype, shape, out)];
}
