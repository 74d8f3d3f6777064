// Shape and layout ops: reshape (a view), permute/transpose, expand, slice, pad, concat, split.
// Everything but reshape copies through the 'strided' kernel, so tensors stay contiguous.
import { record } from '../autograd.js';
import { broadcastShapes, fmt, normAxis, resolveReshape, ShapeError, stridesOf } from '../shape.js';
import { Tensor } from '../tensor.js';
import { exec1 } from './exec.js';
import { sumToShape } from './reduce.js';

export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const to = resolveReshape(x.shape, shape);
  if (to.length === x.shape.length && to.every((d, i) => d === x.shape[i])) return x;
  const out = new Tensor(x.backend, x.storage, to, x.dtype);
  return record(out, 'reshape', [x], (g) => [reshape(g, x.shape)]);
}

export function permute(x: Tensor, axes: readonly number[]): Tensor {
  const norm = axes.map((a) => normAxis(a, x.ndim));
  if (norm.length !== x.ndim || new Set(norm).size !== x.ndim) {
    throw new ShapeError(
      `permute ${JSON.stringify(axes)} is not a permutation of the ${x.ndim} axes of ${fmt(x.shape)}`,
    );
  }
  if (norm.every((a, i) => a === i)) return x;
  const st = stridesOf(x.shape);
  const out = exec1('strided', [x], {
    shape: norm.map((a) => x.shape[a]!),
    strides: norm.map((a) => st[a]!),
    offset: 0,
  });
  const inverse = new Array<number>(norm.length);
  norm.forEach((a, i) => (inverse[a] = i));
  return record(out, 'permute', [x], (g) => [permute(g, inverse)]);
}

export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const axes = x.shape.map((_, i) => i);
  const i = normAxis(a, x.ndim);
  const j = normAxis(b, x.ndim);
  [axes[i], axes[j]] = [axes[j]!, axes[i]!];
  return permute(x, axes);
}

/** Broadcasts to `shape` (materialised; the gradient sums back). */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const target = broadcastShapes(x.shape, shape);
  if (target.length !== shape.length || target.some((d, i) => d !== shape[i])) {
    throw new ShapeError(`cannot expand ${fmt(x.shape)} to ${fmt(shape)}`);
  }
  if (target.length === x.ndim && target.every((d, i) => d === x.shape[i])) return x;
  const own = stridesOf(x.shape);
  const strides = target.map((_d, i) => {
    const k = i - (target.length - x.ndim);
    return k < 0 || x.shape[k] === 1 ? 0 : own[k]!;
  });
  const out = exec1('strided', [x], { shape: target, strides, offset: 0 });
  return record(out, 'expand', [x], (g) => [sumToShape(g, x.shape)]);
}

export function squeeze(x: Tensor, axis?: number): Tensor {
  if (axis === undefined)
    return reshape(
      x,
      x.shape.filter((d) => d !== 1),
    );
  const a = normAxis(axis, x.ndim);
  if (x.shape[a] !== 1) throw new ShapeError(`squeeze: axis ${axis} of ${fmt(x.shape)} has size ${x.shape[a]}, not 1`);
  return reshape(
    x,
    x.shape.filter((_, i) => i !== a),
  );
}

export function unsqueeze(x: Tensor, axis: number): Tensor {
  const a = normAxis(axis, x.ndim + 1);
  const s = [...x.shape];
  s.splice(a, 0, 1);
  return reshape(x, s);
}

/**
 * Slices with per-axis [start, end) (negative counts from the end, like Python; missing axes are
 * kept whole). Out-of-range bounds are an error, not a silent clamp.
 */
export function slice(x: Tensor, starts: readonly number[], ends?: readonly (number | undefined)[]): Tensor {
  if (starts.length > x.ndim || (ends && ends.length > x.ndim))
    throw new ShapeError(`slice of ${fmt(x.shape)} has more bounds than axes`);
  const before: number[] = [];
  const after: number[] = [];
  const shape: number[] = [];
  x.shape.forEach((d, i) => {
    let s = starts[i] ?? 0;
    let e = ends?.[i] ?? d;
    if (s < 0) s += d;
    if (e < 0) e += d;
    if (!Number.isInteger(s) || !Number.isInteger(e) || s < 0 || e > d || s > e) {
      throw new ShapeError(
        `slice [${starts[i] ?? 0}, ${ends?.[i] ?? d}) is out of range for axis ${i} of size ${d} (shape ${fmt(x.shape)})`,
      );
    }
    before.push(s);
    after.push(d - e);
    shape.push(e - s);
  });
  if (shape.every((d, i) => d === x.shape[i])) return x;
  const st = stridesOf(x.shape);
  const offset = before.reduce((o, b, i) => o + b * st[i]!, 0);
  const out = exec1('strided', [x], { shape, strides: st, offset });
  return record(out, 'slice', [x], (g) => [pad(g, before, after)]);
}

export function narrow(x: Tensor, axis: number, start: number, length: number): Tensor {
  const a = normAxis(axis, x.ndim);
  const starts = x.shape.map((_, i) => (i === a ? start : 0));
  const ends = x.shape.map((d, i) => (i === a ? start + length : d));
  return slice(x, starts, ends);
}

export function pad(x: Tensor, before: readonly number[], after: readonly number[], value = 0): Tensor {
  if (
    before.length !== x.ndim ||
    after.length !== x.ndim ||
    [...before, ...after].some((p) => !Number.isInteger(p) || p < 0)
  ) {
    throw new ShapeError(`pad of ${fmt(x.shape)} needs ${x.ndim} non-negative integers before and after`);
  }
  const out = exec1('pad', [x], { before, after, value });
  return record(out, 'pad', [x], (g) => [
    slice(
      g,
      before,
      x.shape.map((d, i) => before[i]! + d),
    ),
  ]);
}

export function concat(xs: readonly Tensor[], axis = 0): Tensor {
  if (xs.length === 0) throw new ShapeError('concat of no tensors');
  const first = xs[0]!;
  const a = normAxis(axis, first.ndim);
  for (const t of xs) {
    if (t.dtype !== first.dtype) throw new TypeError(`concat: dtypes differ (${first.dtype} and ${t.dtype})`);
    if (t.ndim !== first.ndim || t.shape.some((d, i) => i !== a && d !== first.shape[i])) {
      throw new ShapeError(`concat along axis ${a}: ${fmt(t.shape)} does not match ${fmt(first.shape)} off that axis`);
    }
  }
  if (xs.length === 1) return first;
  const out = exec1('concat', xs, { axis: a });
  return record(out, 'concat', xs, (g) => {
    let at = 0;
    return xs.map((t) => {
      const part = narrow(g, a, at, t.shape[a]!);
      at += t.shape[a]!;
      return part;
    });
  });
}

export function stack(xs: readonly Tensor[], axis = 0): Tensor {
  if (xs.length === 0) throw new ShapeError('stack of no tensors');
  const a = normAxis(axis, xs[0]!.ndim + 1);
  return concat(
    xs.map((t) => unsqueeze(t, a)),
    a,
  );
}

/** Splits along `axis` into pieces of `sizes` (or equal pieces of that size). */
export function split(x: Tensor, sizes: number | readonly number[], axis = 0): Tensor[] {
  const a = normAxis(axis, x.ndim);
  const d = x.shape[a]!;
  const list =
    typeof sizes === 'number'
      ? Array.from({ length: Math.ceil(d / sizes) }, (_, i) => Math.min(sizes, d - i * sizes))
      : [...sizes];
  if (list.reduce((s, v) => s + v, 0) !== d || list.some((v) => !Number.isInteger(v) || v < 0)) {
    throw new ShapeError(`split sizes ${JSON.stringify(sizes)} do not add up to axis ${a} of ${fmt(x.shape)}`);
  }
  let at = 0;
  return list.map((n) => {
    const part = narrow(x, a, at, n);
    at += n;
    return part;
  });
}
