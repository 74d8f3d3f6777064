// A free list of f32 output buffers. Fresh typed arrays are costly here (zeroed memory, and V8
// runs full collections under external-memory pressure, several per training step), so the
// autograd backward hands back gradient buffers it can prove dead (recycleStorage) and the hot
// kernels take their outputs from here (takeF32). Only whole buffers born during the backward
// that recycles them qualify, and the activations a recycling scope (recycling-scope.ts) proves dead
// when it closes: leaves' gradients and anything another live tensor may view are never reused.
// While the GEMM engine has room the arrays handed out live in its memory (resident-outputs.ts), all
// views of one buffer: so buffers are tracked by array, and memory is compared by memoryKey. An array
// a background product still reads in place is held back until no product is pending.
import type { Storage } from '../backend.js';
import type { DType } from '../dtype.js';
import { CpuStorage, POISON_RECYCLED_BY_DEFAULT, ResidentStorage } from './backend.js';
import { anyDeferred, finishDeferred, isDeferred } from '../deferred.js';
import { gemmConfig } from './gemm/config.js';
import { inOutputMemory, readByDeferredProducts } from './gemm/index.js';
import { isResidentOutput, outputMemoryKey, residentF32 } from './resident-outputs.js';

/** Below this many elements a fresh array is cheap and not worth tracking. */
const MIN_ELEMENTS = 4096;
/**
 * Most bytes the free list holds; past it buffers are left to the garbage collector. Room for a
 * training step's dropped gradients (zeroGrad), which the next backward takes again: a fresh buffer
 * past glibc's mmap threshold costs its page faults (~22 µs per 4 KiB page here) every step.
 */
const CAPACITY_BYTES = 4 * 1024 * 1024 * 1024;

/** Arrays handed back, by length: host arrays and arrays in the engine's memory apart (see takeF32). */
const free = { host: new Map<number, Float32Array[]>(), resident: new Map<number, Float32Array[]>() };
let pooledBytes = 0;
/** The recycling epoch each array takeF32 handed out was (re)issued in (-1: in the free list). */
const born = new WeakMap<Float32Array, number>();
let clock = 0;
/**
 * Arrays recycled while a background product still reads them in place (a weight gradient reading a
 * dead activation gradient): they join the free list once no product is pending, instead of the
 * caller waiting for those products at each recycle.
 */
const held: Float32Array[] = [];

// Debug mode: every buffer handed back is filled with NaN, so a reader that kept it past its release
// (an escape) computes NaN instead of silently reading the next owner's values.
let poison = POISON_RECYCLED_BY_DEFAULT;

/** Turns the poison mode on or off (default: the environment variable DSV3_POISON_RECYCLED=1); returns the old setting. */
export function setPoisonRecycled(on: boolean): boolean {
  const was = poison;
  poison = on;
  return was;
}

function reuse(lists: Map<number, Float32Array[]>, n: number): Float32Array | undefined {
  const a = lists.get(n)?.pop();
  if (a) pooledBytes -= a.byteLength;
  return a;
}

/** An f32 array of n elements for a kernel's output; a reused one holds stale values: write all of it. */
export function takeF32(n: number): Float32Array {
  if (n < MIN_ELEMENTS) return new Float32Array(n);
  if (held.length > 0 && !anyDeferred()) for (const d of held.splice(0)) pool(d);
  // Resident first (a product reads it in place): a recycled block, a fresh one; then host arrays.
  const a =
    (gemmConfig.residentOutputs ? reuse(free.resident, n) : undefined) ??
    residentF32(n) ??
    reuse(free.host, n) ??
    new Float32Array(n);
  born.set(a, clock);
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

/**
 * What the memory behind a storage is known by, equal for storages whose arrays may overlap: a host
 * array's buffer, an engine-memory array's block address (resident-outputs.ts); null for other backends.
 */
export type MemoryKey = ArrayBufferLike | number;

export function memoryKey(s: Storage): MemoryKey | null {
  if (!(s instanceof CpuStorage)) return null;
  const d = s.data;
  // A weight in the outputs' memory: no output block overlaps it (in another engine's: its buffer).
  if (s instanceof ResidentStorage) return inOutputMemory(d) ? d.byteOffset : d.buffer;
  return outputMemoryKey(d) ?? d.buffer;
}

/**
 * The memory key of a CPU storage whose array is all of its memory — a whole host buffer, or an array
 * takeF32 handed out in the engine's memory — else null (other backends, resident weights, partial views).
 */
export function wholeMemory(s: Storage): MemoryKey | null {
  if (!(s instanceof CpuStorage) || s instanceof ResidentStorage) return null;
  const d = s.data;
  if (isResidentOutput(d)) return d.byteOffset;
  if (outputMemoryKey(d) !== null) return null; // a view of engine memory
  return d.byteOffset === 0 && d.byteLength === d.buffer.byteLength ? d.buffer : null;
}

/** The array behind `s` if takeF32 handed it out (whole, f32). */
function issuedArray(s: Storage): Float32Array | null {
  if (!(s instanceof CpuStorage) || s instanceof ResidentStorage) return null;
  const d = s.data;
  return d instanceof Float32Array && born.has(d) ? d : null;
}

/** Whether the f32 array behind `s` was issued by takeF32 in `epoch` or later (so nothing older holds it). */
export function issuedSince(s: Storage, epoch: number): boolean {
  const d = issuedArray(s);
  const at = d ? born.get(d) : undefined;
  return at !== undefined && at >= epoch;
}

/**
 * Returns a dead f32 storage's array to the free list if it was issued in `epoch` or later (0: any
 * array takeF32 issued, for a caller that knows it holds the only reference).
 */
export function recycleStorage(s: Storage, epoch: number): boolean {
  const d = issuedArray(s);
  if (!d) return false;
  if (isDeferred(d)) finishDeferred(); // a background product still writing it: never hand it out before
  if (d.length < MIN_ELEMENTS) return false;
  const at = born.get(d)!;
  if (at < epoch || at < 0 || pooledBytes + d.byteLength > CAPACITY_BYTES) return false;
  born.set(d, -1); // in the free list: never recycled twice
  pooledBytes += d.byteLength;
  if (readByDeferredProducts(d)) held.push(d);
  else pool(d);
  return true;
}

/** Puts a recycled array on its free list (poisoned in debug mode). */
function pool(d: Float32Array): void {
  if (poison) d.fill(Number.NaN);
  const lists = isResidentOutput(d) ? free.resident : free.host;
  let list = lists.get(d.length);
  if (!list) lists.set(d.length, (list = []));
  list.push(d);
}
