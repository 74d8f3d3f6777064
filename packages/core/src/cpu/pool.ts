// A free list of f32 output buffers. Fresh typed arrays are costly here (zeroed memory, and V8
// runs full collections under external-memory pressure, several per training step), so the
// autograd backward hands back gradient buffers it can prove dead (recycleStorage) and the hot
// kernels take their outputs from here (takeF32). Only whole buffers born during the backward
// that recycles them qualify, and the activations a recycling scope (recycling-scope.ts) proves dead
// when it closes: leaves' gradients and anything another live tensor may view are never reused.
import type { Storage } from '../backend.js';
import type { DType } from '../dtype.js';
import { CpuStorage, ResidentStorage } from './backend.js';
import { finishDeferred, isDeferred } from '../deferred.js';

/** Below this many elements a fresh array is cheap and not worth tracking. */
const MIN_ELEMENTS = 4096;
/**
 * Most bytes the free list holds; past it buffers are left to the garbage collector. Room for a
 * training step's dropped gradients (zeroGrad), which the next backward takes again: a fresh buffer
 * past glibc's mmap threshold costs its page faults (~22 µs per 4 KiB page here) every step.
 */
const CAPACITY_BYTES = 4 * 1024 * 1024 * 1024;

const free = new Map<number, Float32Array[]>();
let pooledBytes = 0;
/** The recycling epoch each tracked buffer was (re)issued in. */
const born = new WeakMap<ArrayBufferLike, number>();
let clock = 0;

// Debug mode: every buffer handed back is filled with NaN, so a reader that kept it past its release
// (an escape) computes NaN instead of silently reading the next owner's values.
let poison =
  (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.DSV3_POISON_RECYCLED === '1';

/** Turns the poison mode on or off (default: the environment variable DSV3_POISON_RECYCLED=1); returns the old setting. */
export function setPoisonRecycled(on: boolean): boolean {
  const was = poison;
  poison = on;
  return was;
}

/** An f32 array of n elements for a kernel's output; a reused one holds stale values: write all of it. */
export function takeF32(n: number): Float32Array {
  if (n < MIN_ELEMENTS) return new Float32Array(n);
  const reused = free.get(n)?.pop();
  if (reused) pooledBytes -= reused.byteLength;
  const a = reused ?? new Float32Array(n);
  born.set(a.buffer, clock);
  return a;
}

/**
 * A float output of a kernel computing in `dtype` (f64 stays f64, the rest compute in f32), from the
 * free list where it can: floatArray's counterpart for kernels that write every element.
 */
export function takeFloat(dtype: DType, n: number): Float32Array | Float64Array {
  return dtype === 'f64' ? new Float64Array(n) : takeF32(n);
}

/** Starts a recycling epoch (a backward pass); buffers issued from now on may be recycled in it. */
export function startRecyclingEpoch(): number {
  return ++clock;
}

/** The whole host buffer behind a CPU storage, or null (other backends, resident or partial views). */
export function wholeBuffer(s: Storage): ArrayBufferLike | null {
  if (!(s instanceof CpuStorage) || s instanceof ResidentStorage) return null;
  const d = s.data;
  return d.byteOffset === 0 && d.byteLength === d.buffer.byteLength ? d.buffer : null;
}

/** Whether the f32 buffer behind `s` was issued by takeF32 in `epoch` or later (so nothing older holds it). */
export function issuedSince(s: Storage, epoch: number): boolean {
  const buf = wholeBuffer(s);
  const at = buf ? born.get(buf) : undefined;
  return at !== undefined && at >= epoch;
}

/**
 * Returns a dead f32 storage's buffer to the free list if it was issued in `epoch` or later (0: any
 * buffer takeF32 issued, for a caller that knows it holds the only reference).
 */
export function recycleStorage(s: Storage, epoch: number): boolean {
  const buf = wholeBuffer(s);
  const d = (s as CpuStorage).data;
  if (isDeferred(d)) finishDeferred(); // a background product still writing it: never hand it out before
  if (!buf || !(d instanceof Float32Array) || d.length < MIN_ELEMENTS) return false;
  const at = born.get(buf);
  if (at === undefined || at < epoch || at < 0 || pooledBytes + d.byteLength > CAPACITY_BYTES) return false;
  born.set(buf, -1); // in the free list: never recycled twice
  if (poison) d.fill(Number.NaN);
  pooledBytes += d.byteLength;
  let list = free.get(d.length);
  if (!list) free.set(d.length, (list = []));
  list.push(d);
  return true;
}
