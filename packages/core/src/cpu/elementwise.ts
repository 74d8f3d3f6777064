// Elementwise CPU kernels: unary math, broadcasting binary ops, where and cast.
import type { Backend, KernelTensor } from '../backend.js';
import { copyOf, fromNumeric, isFloatDType, type DType } from '../dtype.js';
import type { BinaryOp, KernelAttrs, UnaryOp } from '../kernel-types.js';
import { broadcastShapes, broadcastStrides, sizeOf, type Shape } from '../shape.js';
import { floatArray, num, raw, result, wrap } from './backend.js';
import { siluInto } from './gated-simd.js';

const UNARY: Record<UnaryOp, (x: number) => number> = {
  neg: (x) => -x,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  silu: (x) => x / (1 + Math.exp(-x)),
  tanh: Math.tanh,
  abs: Math.abs,
  sign: (x) => (x > 0 ? 1 : x < 0 ? -1 : x),
  recip: (x) => 1 / x,
  sin: Math.sin,
  cos: Math.cos,
  square: (x) => x * x,
};

export function unaryKernel(_b: Backend, [x]: KernelTensor[], { op }: KernelAttrs['unary']): KernelTensor[] {
  const xs = num(x!);
  const out = isFloatDType(x!.dtype) ? floatArray(x!.dtype, xs.length) : new Float64Array(xs.length);
  const f = UNARY[op];
  // f32 silu: the fast path's SIMD pass (one f32 silu on the CPU backend, see siluF32)
  if (op === 'silu' && x!.dtype === 'f32' && xs instanceof Float32Array && out instanceof Float32Array)
    siluInto(xs, out);
  else if (op === 'exp') for (let i = 0; i < xs.length; i++) out[i] = Math.exp(xs[i]!);
  else if (op === 'neg') for (let i = 0; i < xs.length; i++) out[i] = -xs[i]!;
  else for (let i = 0; i < xs.length; i++) out[i] = f(xs[i]!);
  return [result(x!.dtype, x!.shape, out)];
}

const SCALAR: Record<BinaryOp, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  pow: Math.pow,
  max: (a, b) => (a > b || Number.isNaN(a) ? a : b),
  min: (a, b) => (a < b || Number.isNaN(a) ? a : b),
  lt: (a, b) => +(a < b),
  le: (a, b) => +(a <= b),
  gt: (a, b) => +(a > b),
  ge: (a, b) => +(a >= b),
  eq: (a, b) => +(a === b),
  ne: (a, b) => +(a !== b),
};

type Arr = { [i: number]: number; length: number };

/** One row of a broadcast binary op; the hot ops get their own loops. */
function binaryRow(
  op: BinaryOp,
  a: Arr,
  ao: number,
  as: number,
  b: Arr,
  bo: number,
  bs: number,
  o: Arr,
  oo: number,
  n: number,
): void {
  switch (op) {
    case 'add':
      for (let i = 0; i < n; i++) o[oo + i] = a[ao + i * as]! + b[bo + i * bs]!;
      return;
    case 'sub':
      for (let i = 0; i < n; i++) o[oo + i] = a[ao + i * as]! - b[bo + i * bs]!;
      return;
    case 'mul':
      for (let i = 0; i < n; i++) o[oo + i] = a[ao + i * as]! * b[bo + i * bs]!;
      return;
    case 'div':
      for (let i = 0; i < n; i++) o[oo + i] = a[ao + i * as]! / b[bo + i * bs]!;
      return;
    default: {
      const f = SCALAR[op];
      for (let i = 0; i < n; i++) o[oo + i] = f(a[ao + i * as]!, b[bo + i * bs]!);
    }
  }
}

/**
 * Walks `outShape` row by row (last axis innermost) with one strided input per entry of `strides`,
 * calling `row(offsets, outOffset, rowLength)`; offsets are updated incrementally.
 */
export function forEachRow(
  outShape: Shape,
  strides: number[][],
  row: (offsets: number[], out: number, n: number) => void,
): void {
  const rank = outShape.length;
  const total = sizeOf(outShape);
  if (total === 0) return;
  const n = rank ? outShape[rank - 1]! : 1;
  const offs = strides.map(() => 0);
  const idx = new Array<number>(Math.max(rank - 1, 0)).fill(0);
  for (let o = 0; o < total; o += n) {
    row(offs, o, n);
    for (let d = rank - 2; d >= 0; d--) {
      idx[d]!++;
      for (let k = 0; k < offs.length; k++) offs[k]! += strides[k]![d]!;
      if (idx[d]! < outShape[d]!) break;
      for (let k = 0; k < offs.length; k++) offs[k]! -= strides[k]![d]! * outShape[d]!;
      idx[d] = 0;
    }
  }
}

const lastStride = (s: number[]): number => (s.length ? s[s.length - 1]! : 0);

export function binaryKernel(_b: Backend, [a, b]: KernelTensor[], { op }: KernelAttrs['binary']): KernelTensor[] {
  const shape = broadcastShapes(a!.shape, b!.shape);
  const compare = ['lt', 'le', 'gt', 'ge', 'eq', 'ne'].includes(op);
  const dtype: DType = compare ? 'bool' : a!.dtype;
  const av = num(a!);
  const bv = num(b!);
  const size = sizeOf(shape);
  const out = isFloatDType(a!.dtype) && !compare ? floatArray(a!.dtype, size) : new Float64Array(size);
  const sa = broadcastStrides(a!.shape, shape);
  const sb = broadcastStrides(b!.shape, shape);
  const ia = lastStride(sa);
  const ib = lastStride(sb);
  forEachRow(shape, [sa, sb], (offs, o, n) => binaryRow(op, av, offs[0]!, ia, bv, offs[1]!, ib, out, o, n));
  return [result(dtype, shape, out)];
}

export function whereKernel(_b: Backend, [c, a, b]: KernelTensor[]): KernelTensor[] {
  const shape = broadcastShapes(c!.shape, a!.shape, b!.shape);
  const cv = raw(c!);
  const av = num(a!);
  const bv = num(b!);
  const out = isFloatDType(a!.dtype) ? floatArray(a!.dtype, sizeOf(shape)) : new Float64Array(sizeOf(shape));
  const st = [broadcastStrides(c!.shape, shape), broadcastStrides(a!.shape, shape), broadcastStrides(b!.shape, shape)];
  const [ic, ia, ib] = st.map(lastStride) as [number, number, number];
  forEachRow(shape, st, (offs, o, n) => {
    const [oc, oa, ob] = offs as [number, number, number];
    for (let i = 0; i < n; i++) out[o + i] = cv[oc + i * ic] ? av[oa + i * ia]! : bv[ob + i * ib]!;
  });
  return [result(a!.dtype, shape, out)];
}

export function castKernel(_b: Backend, [x]: KernelTensor[], { dtype }: KernelAttrs['cast']): KernelTensor[] {
  if (x!.dtype === dtype) return [wrap(dtype, x!.shape, copyOf(raw(x!)))];
  const v = num(x!);
  if (isFloatDType(dtype) || dtype === 'bool') return [result(dtype, x!.shape, v)];
  // Floats to ints truncate toward zero; NaN becomes 0 (as typed arrays do).
  return [
    wrap(
      dtype,
      x!.shape,
      fromNumeric(
        dtype,
        Array.from(v, (e) => Math.trunc(e)),
      ),
    ),
  ];
}
