// Kernel outputs in the GEMM engine's memory: takeF32 hands out blocks of the first engine's
// WebAssembly memory while it has room, so the products read a step's activations and gradients in
// place instead of staging a copy of each into that memory. Such arrays all view the memory's one
// buffer, so they are known by their block's address rather than by their buffer. A block goes back to
// the engine when its array is collected (the free list holds the arrays it keeps, so recycled ones
// stay), or when an inference step proves it dead (step-outputs.ts); as for resident weights
// (backend.ts), a view made of one must not outlive the array itself.
//
// V8 does not see these blocks as memory (a view of a wasm memory is a small object), so garbage made
// of them never prompts a collection: a tiny step leaves ~17 outputs (0.7 MB) the free list never sees,
// and no full collection came in 400 steps. Past gemmConfig.residentOutputBytes live, outputs are host
// arrays again, whose external memory makes V8 collect, and the finalizer hands the dead blocks back.
import { gemmConfig } from './gemm/config.js';
import { allocOutputF32, freeOutputBlock, inOutputMemory } from './gemm/index.js';

/** Address -> bytes of every output block whose array is alive. */
const live = new Map<number, number>();
let liveBytes = 0;
const addressOf = new WeakMap<Float32Array, number>();
const blocks = new FinalizationRegistry<number>(returnBlock);

/** Gives the output block at `at` back to the engine (its array collected or proved dead). */
function returnBlock(at: number): void {
  liveBytes -= live.get(at)!;
  live.delete(at);
  freeOutputBlock(at);
}

/** While set (recordResidentOutputs), every array residentF32 hands out is appended to it. */
let recorder: Float32Array[] | null = null;

/**
 * Appends every array residentF32 hands out from now on to `list` (null: stop); returns the list set
 * before, for nesting (step-outputs.ts releases a step's dead outputs from it).
 */
export function recordResidentOutputs(list: Float32Array[] | null): Float32Array[] | null {
  const was = recorder;
  recorder = list;
  return was;
}

/**
 * Sets the most bytes of kernel outputs alive in the engine's memory at once (0: every output on host
 * memory, e.g. to count other engine-memory blocks exactly); returns the old budget.
 */
export function setResidentOutputBudget(bytes: number): number {
  if (!(bytes >= 0)) throw new RangeError(`setResidentOutputBudget: ${bytes} bytes; expected a number >= 0`);
  const was = gemmConfig.residentOutputBytes;
  gemmConfig.residentOutputBytes = bytes;
  return was;
}

/** An f32 array of n elements in the engine's memory (stale values), or null: over the budget, or see allocOutputF32. */
export function residentF32(n: number): Float32Array | null {
  if (liveBytes + n * 4 > gemmConfig.residentOutputBytes) return null;
  const a = allocOutputF32(n);
  if (!a) return null;
  liveBytes += a.byteLength;
  live.set(a.byteOffset, a.byteLength);
  addressOf.set(a, a.byteOffset);
  blocks.register(a, a.byteOffset, a);
  recorder?.push(a);
  return a;
}

/**
 * Returns the block of `a`, an array residentF32 handed out, to the engine now, for a caller that has
 * proved nothing reads `a` (or a view of it) again; false when `a` is no such array or already returned.
 */
export function releaseResidentOutput(a: Float32Array): boolean {
  const at = addressOf.get(a);
  if (at === undefined) return false;
  addressOf.delete(a);
  blocks.unregister(a);
  returnBlock(at);
  return true;
}

/** Whether `a` is an array residentF32 handed out (not a view of one). */
export function isResidentOutput(a: ArrayBufferView): boolean {
  return addressOf.has(a as Float32Array);
}

/**
 * The memory `a` views, when it lies in the engine's memory: the address of the output block holding
 * it, or its own address (resident weights, which no output block overlaps); null for host memory.
 */
export function outputMemoryKey(a: ArrayBufferView): number | null {
  return blockHolding(a) ?? (inOutputMemory(a) ? a.byteOffset : null);
}

/** Whether `a` lies in an output block (an array residentF32 handed out, or a view of one). */
export function inOutputBlock(a: ArrayBufferView): boolean {
  return blockHolding(a) !== null;
}

/** The address of the output block `a` is or views, else null. */
function blockHolding(a: ArrayBufferView): number | null {
  const own = addressOf.get(a as Float32Array);
  if (own !== undefined) return own;
  if (!inOutputMemory(a)) return null;
  const at = a.byteOffset;
  for (const [start, bytes] of live) if (at >= start && at < start + bytes) return start;
  return null;
}

/** Output blocks alive and their bytes (tests, benchmarks: flat across steps when nothing leaks). */
export function residentOutputStats(): { blocks: number; bytes: number } {
  return { blocks: live.size, bytes: liveBytes };
}
