// An inference step's dead kernel outputs handed back to the engine when the step ends, instead of
// waiting for the garbage collector. Kernel outputs live in the GEMM engine's memory
// (resident-outputs.ts), which V8 does not see as memory: garbage made of them never prompts a
// collection, so a prefill's ~127 MiB of them (V3-mini, 512 tokens) stayed until the output budget was
// full, the memory grew to it (peak RSS +0.2 GiB) and from then on every output was a host array
// again (no in-place reads) until some collection came.
//
// What is released is deliberately narrow: only arrays residentF32 handed out during the step (whole
// output blocks), and only when nothing reachable from the step's result or the `keep` roots (the
// model, the cache: walked through their fields, Maps, Sets and arrays; typed arrays and tensors, views
// included) lies in the block. What a root holds (a module's lastRouting) is never looked at again,
// nor is the result of an outermost scope (the caller may hold them): they go to the collector as
// before. A nested scope passes its result's blocks to the enclosing one. Each scope's roots need be
// only what the code it runs outside inner scopes may store into (walking a whole model's 12,700
// objects cost ~4 ms, a seventh of a decode step).
// A block held only in a closure or a WeakMap is not found by the walk: code that keeps outputs past a
// step must keep them reachable from the model (or run outside such a scope). `poison` (default: the
// environment variable DSV3_POISON_RECYCLED=1, as for the free list) fills each released block with
// NaN, so a reader that escaped computes NaN instead of another output's values.
import { isGradEnabled } from '../autograd.js';
import { finishDeferred, isDeferred } from '../deferred.js';
import { Tensor } from '../tensor.js';
import { copyOf } from '../dtype.js';
import { CpuStorage, POISON_RECYCLED_BY_DEFAULT, ResidentStorage, SpareableStorage } from './backend.js';
import { issuedSince } from './pool.js';
import { forEachReachable } from '../reachable.js';
import { inOutputBlock, outputMemoryKey, recordResidentOutputs, releaseResidentOutput } from './resident-outputs.js';

export interface StepOutputsOptions {
  /** Objects whose tensors and arrays outlive the step (the model, the cache). */
  keep?: readonly unknown[];
  /** Fill released blocks with NaN (default: DSV3_POISON_RECYCLED=1). */
  poison?: boolean;
}

/**
 * Runs `fn` (an inference step, no gradient recorded) and returns the engine-memory blocks of the
 * kernel outputs made during it that nothing reachable from its result or `opts.keep` uses. A nested
 * scope passes its result's blocks to the enclosing one. If `fn` throws nothing is released; with gradient
 * recording on (a graph's saved tensors are not walked) `fn` just runs.
 */
export function releasingStepOutputs<T>(fn: () => T, opts: StepOutputsOptions = {}): T {
  if (isGradEnabled()) return fn();
  const made: Float32Array[] = [];
  const outer = recordResidentOutputs(made);
  let result: T;
  try {
    result = fn();
  } finally {
    recordResidentOutputs(outer);
  }
  if (made.length === 0) return result;
  const kept = reachableBlocks(opts.keep ?? []);
  const returned = reachableBlocks([result]);
  const poison = opts.poison ?? POISON_RECYCLED_BY_DEFAULT;
  for (const a of made) {
    // held by a root, or handed back to the free list since (it owns it now): nobody's to release
    if (kept.has(a.byteOffset) || !issuedSince(new CpuStorage(a), 0)) continue;
    // the result's: the enclosing scope's to release once dead
    if (returned.has(a.byteOffset)) outer?.push(a);
    else {
      if (isDeferred(a)) finishDeferred(); // a background product still writing it
      if (poison) a.fill(Number.NaN);
      releaseResidentOutput(a);
    }
  }
  return result;
}

/**
 * `t` for a caller to keep past the step: a copy in host memory when its values lie in a kernel
 * output's block (which the step's scope then releases), else `t` itself. A step's result (a decode
 * step's logits, its hidden states) would otherwise hold its block until a collection. Disposing the
 * copy once read hands its array to the next step's copy of the same length (SpareableStorage).
 */
export function keptOnHost(t: Tensor): Tensor {
  const s = t.storage;
  if (!(s instanceof CpuStorage) || !inOutputBlock(s.data)) return t;
  const src = s.data;
  if (!(src instanceof Float32Array)) return new Tensor(t.backend, new CpuStorage(copyOf(src)), t.shape, t.dtype);
  const copy = SpareableStorage.take(src.length) ?? new Float32Array(src.length);
  copy.set(src);
  return new Tensor(t.backend, new SpareableStorage(copy), t.shape, t.dtype);
}

/** The engine-memory block (outputMemoryKey) of every tensor and typed array reachable from `roots`. */
function reachableBlocks(roots: readonly unknown[]): Set<number> {
  const kept = new Set<number>();
  const keep = (a: ArrayBufferView) => {
    const key = outputMemoryKey(a);
    if (key !== null) kept.add(key);
  };
  forEachReachable(
    roots,
    (t) => {
      const s = t.storage;
      // a weight's block is never an output's
      if (!t.disposed && s instanceof CpuStorage && !(s instanceof ResidentStorage)) keep(s.data);
    },
    keep,
  );
  return kept;
}
