// Index ops: index select / embedding gather, index-add, take/scatter along an axis, top-k, cumsum.
import { record } from '../autograd.js';
import { recycleStorage } from '../cpu/pool.js';
import { fmt, normAxis, ShapeError } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { full } from './creation.js';
import { exec, exec1, requireComputable, requireDType } from './exec.js';
import { reshape } from './shape-ops.js';

const zerosLike = (x: Tensor): Tensor => full(x.shape, 0, { dtype: x.dtype, backend: x.backend });

/** Selects slices of `x` along `axis` at `indices` (any shape); y.shape = x[:axis] + idx + x[axis+1:]. */
export function indexSelect(x: Tensor, indices: Tensor, axis = 0): Tensor {
  requireDType('indexSelect indices', indices, 'i32');
  const a = normAxis(axis, x.ndim);
  const out = exec1('gather', [x, indices], { axis: a });
  return record(out, 'indexSelect', [x], (g) => {
    const flatG = reshape(g, [...x.shape.slice(0, a), indices.size, ...x.shape.slice(a + 1)]);
    const zeros = zerosLike(x);
    const dx = exec1('scatterAdd', [zeros, reshape(indices, [-1]), flatG], { axis: a, zeros: true });
    // The zeros only give the sum its shape and start (no kernel keeps them): their buffer goes back to
    // the CPU free list, or every backward takes a fresh one (page faults: ms per 512 KiB here).
    if (recycleStorage(zeros.storage, 0)) zeros.dispose();
    return [dx];
  });
}

/** Embedding lookup: rows of `weight` [vocab, dim] at `ids` (any shape) → [...ids.shape, dim]. */
export function embedding(ids: Tensor, weight: Tensor): Tensor {
  if (weight.ndim !== 2) throw new ShapeError(`embedding weight must be [vocab, dim], got ${fmt(weight.shape)}`);
  return indexSelect(weight, ids, 0);
}

/** y = x; y[.., idx[i], ..] += src[.., i, ..] along `axis` (torch index_add). */
export function indexAdd(x: Tensor, axis: number, indices: Tensor, src: Tensor): Tensor {
  requireDType('indexAdd indices', indices, 'i32');
  const a = normAxis(axis, x.ndim);
  if (indices.ndim !== 1) throw new ShapeError(`indexAdd indices must be 1-d, got ${fmt(indices.shape)}`);
  const want = x.shape.map((d, i) => (i === a ? indices.size : d));
  if (src.ndim !== x.ndim || src.shape.some((d, i) => d !== want[i]))
    throw new ShapeError(`indexAdd src must have shape ${fmt(want)}, got ${fmt(src.shape)}`);
  if (src.dtype !== x.dtype) throw new TypeError(`indexAdd: dtypes differ (${x.dtype} and ${src.dtype})`);
  const out = exec1('scatterAdd', [x, indices, src], { axis: a });
  return record(out, 'indexAdd', [x, src], (g) => [g, exec1('gather', [g, indices], { axis: a })]);
}

function checkAlong(op: string, x: Tensor, idx: Tensor, a: number): void {
  requireDType(`${op} indices`, idx, 'i32');
  if (idx.ndim !== x.ndim || idx.shape.some((d, i) => i !== a && d !== x.shape[i])) {
    throw new ShapeError(`${op}: indices ${fmt(idx.shape)} must match ${fmt(x.shape)} on every axis but ${a}`);
  }
}

/** y[.., j, ..] = x[.., idx[.., j, ..], ..] along `axis` (numpy take_along_axis). */
export function takeAlong(x: Tensor, indices: Tensor, axis = -1): Tensor {
  const a = normAxis(axis, x.ndim);
  checkAlong('takeAlong', x, indices, a);
  const out = exec1('takeAlong', [x, indices], { axis: a });
  return record(out, 'takeAlong', [x], (g) => [scatterAlong(zerosLike(x), indices, g, a)]);
}

/** y = x; y[.., idx[.., j, ..], ..] += src[.., j, ..] along `axis` (the adjoint of takeAlong). */
export function scatterAlong(x: Tensor, indices: Tensor, src: Tensor, axis = -1): Tensor {
  const a = normAxis(axis, x.ndim);
  checkAlong('scatterAlong', x, indices, a);
  if (src.ndim !== indices.ndim || src.shape.some((d, i) => d !== indices.shape[i]))
    throw new ShapeError(`scatterAlong: src ${fmt(src.shape)} must match indices ${fmt(indices.shape)}`);
  const out = exec1('scatterAlong', [x, indices, src], { axis: a });
  return record(out, 'scatterAlong', [x, src], (g) => [g, exec1('takeAlong', [g, indices], { axis: a })]);
}

/** The k largest entries along the last axis, descending (lowest index first on ties): [values, i32 indices]. */
export function topk(x: Tensor, k: number): [Tensor, Tensor] {
  requireComputable('topk', x);
  const n = x.shape[x.ndim - 1];
  if (n === undefined) throw new ShapeError('topk of a 0-d tensor');
  if (!Number.isInteger(k) || k < 0 || k > n)
    throw new RangeError(`topk: k = ${k} must be an integer in [0, ${n}] (the last axis of ${fmt(x.shape)})`);
  const [values, indices] = exec('topk', [x], { k }) as [Tensor, Tensor];
  record(values, 'topk', [x], (g) => [scatterAlong(zerosLike(x), indices, g, -1)]);
  return [values, indices];
}

/** Inclusive prefix sum along `axis` (from the end when `reverse`). */
export function cumsum(x: Tensor, axis = -1, reverse = false): Tensor {
  requireComputable('cumsum', x);
  const a = normAxis(axis, x.ndim);
  const out = exec1('cumsum', [x], { axis: a, reverse });
  return record(out, 'cumsum', [x], (g) => [cumsum(g, a, !reverse)]);
}
