// Gradients kept in caller-owned arrays. A leaf given a persistent buffer (`keepGradientIn`, e.g. its
// slice of a flat all-reduce bucket) gets a backward pass's first contribution copied into that buffer
// and every later one added into it, where the plain rule (`t.grad = t.grad.add(g)`) makes a new
// gradient-sized tensor per micro-batch. Per element the sums are the plain rule's (`a + b` rounded in
// the buffer's dtype), so the results are bitwise equal. A kept buffer is never a gradient the leaf
// "owns" (autograd's ownsGrad): zeroGrad drops the view, never the caller's array.
import { cpu, CpuStorage } from './cpu/backend.js';
import { addInto } from './cpu/train-kernels.js';
import { finishDeferred, isDeferred } from './deferred.js';
import { Tensor } from './tensor.js';

/** Float data a gradient buffer can hold (the master weights' dtypes). */
export type GradientArray = Float32Array | Float64Array;

interface Slot {
  data: GradientArray;
  /** The tensor last handed out as the leaf's `.grad` over `data` (a new one after it was disposed). */
  view: Tensor | null;
}

const slots = new WeakMap<Tensor, Slot>();
const dtypeOf = (a: GradientArray) => (a instanceof Float64Array ? 'f64' : 'f32');

/** The CPU array behind an f32 / f64 tensor (its first `size` elements), or null elsewhere. */
export function cpuData(t: Tensor): GradientArray | null {
  if (t.backend !== cpu || (t.dtype !== 'f32' && t.dtype !== 'f64')) return null;
  const d = (t.storage as CpuStorage).data as GradientArray;
  if (isDeferred(d)) finishDeferred(); // a gradient a background product is still writing
  return d.length === t.size ? d : d.subarray(0, t.size);
}

/**
 * Gives `leaf` (a CPU f32/f64 tensor that requires grad) a persistent gradient buffer of its dtype and
 * size. Call again after the leaf is replaced (a parameter's `assign` makes a new value tensor); a
 * buffer already handed out as `previous`'s `.grad` stays the gradient.
 */
export function keepGradientIn(leaf: Tensor, data: GradientArray, previous?: Tensor): void {
  if (leaf.backend !== cpu || leaf.dtype !== dtypeOf(data) || data.length !== leaf.size)
    throw new Error(
      `keepGradientIn: a ${leaf.dtype} leaf of ${leaf.size} elements on ${leaf.backend.name} cannot use a ${dtypeOf(data)} buffer of ${data.length} on cpu`,
    );
  const old = previous ? slots.get(previous) : undefined;
  slots.set(leaf, old && old.data === data ? old : { data, view: null });
}

/** The leaf's persistent buffer as a tensor (the leaf's `.grad` when it is one), or null without a buffer. */
export function keptGradient(leaf: Tensor): Tensor | null {
  const s = slots.get(leaf);
  if (!s) return null;
  if (!s.view || s.view.disposed) s.view = new Tensor(cpu, new CpuStorage(s.data), leaf.shape, leaf.dtype);
  return s.view;
}

/** Whether the leaf's `.grad` is its persistent buffer (so it may be changed in place). */
export function gradIsKept(leaf: Tensor): boolean {
  const s = slots.get(leaf);
  return !!s && !!leaf.grad && leaf.grad === s.view && !s.view.disposed;
}

/**
 * Adds `g` into the leaf's persistent buffer when it has one that `g` fits (same dtype, CPU) and its
 * `.grad` is unset or the buffer: copied in as the first contribution, added in place after. Returns
 * whether it did; `g` is left as it was either way.
 */
export function addToKeptGradient(t: Tensor, g: Tensor): boolean {
  const s = slots.get(t);
  const src = s && g.dtype === t.dtype ? cpuData(g) : null;
  if (!s || !src) return false;
  if (!t.grad) {
    s.data.set(src);
    t.grad = keptGradient(t);
    return true;
  }
  if (!gradIsKept(t)) return false;
  addInto(s.data, src);
  return true;
}
