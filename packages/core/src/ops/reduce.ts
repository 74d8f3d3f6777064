// Reductions (sum, mean, max, min, argmax, argmin) over axes, and their gradients.
import { record } from '../autograd.js';
import { normAxis, ShapeError, stridesOf, type Shape } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { full } from './creation.js';
import { div } from './elementwise.js';
import { exec1, requireComputable } from './exec.js';
import { scatterAlong } from './indexing.js';
import { expand, reshape } from './shape-ops.js';

function axesOf(x: Tensor, axis: number | readonly number[] | undefined): number[] {
  const list = axis === undefined ? x.shape.map((_, i) => i) : typeof axis === 'number' ? [axis] : [...axis];
  const norm = list.map((a) => normAxis(a, x.ndim));
  if (new Set(norm).size !== norm.length) throw new ShapeError(`repeated axis in ${JSON.stringify(axis)}`);
  return norm.sort((a, b) => b - a);
}

function keptShape(shape: Shape, axes: number[]): number[] {
  return shape.map((d, i) => (axes.includes(i) ? 1 : d));
}

export function sum(x: Tensor, axis?: number | readonly number[], keepdims = false): Tensor {
  requireComputable('sum', x);
  const axes = axesOf(x, axis);
  let out = x;
  for (const a of axes) out = exec1('reduce', [out], { op: 'sum', axis: a });
  if (axes.length === 0) out = exec1('strided', [x], { shape: x.shape, strides: stridesOf(x.shape), offset: 0 });
  const kept = keptShape(x.shape, axes);
  if (keepdims) out = reshape(out, kept);
  return record(out, 'sum', [x], (g) => [expand(reshape(g, kept), x.shape)]);
}

export function mean(x: Tensor, axis?: number | readonly number[], keepdims = false): Tensor {
  const axes = axesOf(x, axis);
  const n = axes.reduce((p, a) => p * x.shape[a]!, 1);
  return div(sum(x, axes, keepdims), n);
}

function extreme(op: 'max' | 'min', x: Tensor, axis: number | undefined, keepdims: boolean): Tensor {
  requireComputable(op, x);
  if (axis === undefined) {
    const all = extreme(op, reshape(x, [-1]), 0, false);
    return keepdims
      ? reshape(
          all,
          x.shape.map(() => 1),
        )
      : all;
  }
  const a = normAxis(axis, x.ndim);
  const idx = exec1('reduce', [x], { op: op === 'max' ? 'argmax' : 'argmin', axis: a });
  const kept = keptShape(x.shape, [a]);
  const idxKept = reshape(idx, kept);
  const vals = exec1('takeAlong', [x, idxKept], { axis: a });
  const out = keepdims
    ? vals
    : reshape(
        vals,
        x.shape.filter((_, i) => i !== a),
      );
  // The gradient goes to the first extreme element, as the value was taken from there.
  return record(out, op, [x], (g) => [
    scatterAlong(full(x.shape, 0, { dtype: x.dtype, backend: x.backend }), idxKept, reshape(g, kept), a),
  ]);
}

export const max = (x: Tensor, axis?: number, keepdims = false): Tensor => extreme('max', x, axis, keepdims);
export const min = (x: Tensor, axis?: number, keepdims = false): Tensor => extreme('min', x, axis, keepdims);

export function argmax(x: Tensor, axis = -1, keepdims = false): Tensor {
  requireComputable('argmax', x);
  const a = normAxis(axis, x.ndim);
  const out = exec1('reduce', [x], { op: 'argmax', axis: a });
  return keepdims ? reshape(out, keptShape(x.shape, [a])) : out;
}

export function argmin(x: Tensor, axis = -1, keepdims = false): Tensor {
  requireComputable('argmin', x);
  const a = normAxis(axis, x.ndim);
  const out = exec1('reduce', [x], { op: 'argmin', axis: a });
  return keepdims ? reshape(out, keptShape(x.shape, [a])) : out;
}

/** Sums a broadcast gradient back down to `shape` (the adjoint of broadcasting). */
export function sumToShape(g: Tensor, shape: Shape): Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const lead = g.ndim - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.ndim; i++) if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  return reshape(sum(g, axes), shape);
}
