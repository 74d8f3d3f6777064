// The primitive kernel set every backend implements. Everything else in core (and the autograd
// rules) is composed from these; packages add fused kernels of their own through the registry.
import type { DType } from './dtype.js';
import type { Shape } from './shape.js';

export const UNARY_OPS = [
  'neg',
  'exp',
  'log',
  'sqrt',
  'rsqrt',
  'sigmoid',
  'silu',
  'tanh',
  'abs',
  'sign',
  'recip',
  'sin',
  'cos',
  'square',
] as const;
export type UnaryOp = (typeof UNARY_OPS)[number];

export const ARITH_OPS = ['add', 'sub', 'mul', 'div', 'pow', 'max', 'min'] as const;
export const COMPARE_OPS = ['lt', 'le', 'gt', 'ge', 'eq', 'ne'] as const;
export type ArithOp = (typeof ARITH_OPS)[number];
export type CompareOp = (typeof COMPARE_OPS)[number];
export type BinaryOp = ArithOp | CompareOp;

export type ReduceOp = 'sum' | 'max' | 'min' | 'argmax' | 'argmin';

/** Attributes of each primitive kernel, by op name. Inputs are listed in the comments. */
export interface KernelAttrs {
  /** [x] → [y]; float dtypes (neg/abs/sign/square also on i32). */
  unary: { op: UnaryOp };
  /** [a, b] (same dtype, broadcast) → [y]; compare ops give bool. */
  binary: { op: BinaryOp };
  /** [cond: bool, a, b] (broadcast) → [y]. */
  where: Record<string, never>;
  /** [x] → [y] of `dtype` (floats round to nearest even, floats→ints truncate toward zero). */
  cast: { dtype: DType };
  /** [x] → [y] with `axis` removed; argmax/argmin give i32 (first index on ties). */
  reduce: { op: ReduceOp; axis: number };
  /** [a, b] → [c]: batched matrix product over the last two axes, batch dims broadcast. */
  matmul: { transA: boolean; transB: boolean };
  /** [x] → [y]: softmax (or log-softmax) over the last axis, computed in f32 or wider. */
  softmax: { log: boolean };
  /** [x, weight] → [y]: x / sqrt(mean(x², last axis) + eps) * weight. */
  rmsnorm: { eps: number };
  /** [x, idx: i32] → [y]: index select along `axis`; y.shape = x.shape[:axis] + idx.shape + x.shape[axis+1:]. */
  gather: { axis: number };
  /** [x, idx: i32 (1-d), src] → [y]: y = x; y[.., idx[i], ..] += src[.., i, ..] along `axis` (index_add). */
  /** zeros: x is known to hold only zeros (a backend may skip reading it) */
  scatterAdd: { axis: number; zeros?: boolean };
  /** [x, idx: i32 same rank as x] → [y] with idx's shape: y[.., j, ..] = x[.., idx[.., j, ..], ..] (take_along_axis). */
  takeAlong: { axis: number };
  /** [x, idx, src] → [y]: y = x; y[.., idx[.., j, ..], ..] += src[.., j, ..] (the adjoint of takeAlong). */
  scatterAlong: { axis: number };
  /** [x] → [y] contiguous of `shape`: y[i] = x[offset + Σ i_d * strides[d]] (slices, permutes, broadcasts, flips). */
  strided: { shape: Shape; strides: readonly number[]; offset: number };
  /** [x] → [y]: pad with `value`, before[d] / after[d] elements on each axis. */
  pad: { before: readonly number[]; after: readonly number[]; value: number };
  /** [...xs] → [y]: concatenation along `axis`. */
  concat: { axis: number };
  /** [x] → [values, indices: i32]: the k largest along the last axis, descending, lowest index first on ties. */
  topk: { k: number };
  /** [x] → [y]: inclusive prefix sum along `axis` (from the end when `reverse`). */
  cumsum: { axis: number; reverse: boolean };
  /** [] → [y]: a tensor filled with `value`. */
  full: { shape: Shape; dtype: DType; value: number };
  /** [] → [y: i32 or `dtype`]: each element's index along `axis`. */
  iota: { shape: Shape; axis: number; dtype: DType };
}

export type PrimitiveOp = keyof KernelAttrs;
