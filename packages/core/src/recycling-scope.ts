// Recycling scopes: a training step's recorded activations go back to the CPU free list when the step
// ends, instead of waiting for the garbage collector (a tiny step made ~49 MB of them, and V8 answered
// that external-memory pressure with two full collections per step).
//
// What a scope recycles is deliberately narrow, so that nothing the caller can still reach is reused:
// only tensors an op *recorded for autograd* inside the scope (their buffers issued by takeF32 inside
// it, whole, f32), and only when no tensor reachable from what the scope keeps (its result, the
// `keep` roots such as the model and the optimizers, walked through their fields) uses the same
// buffer. Caches built under noGrad (rotary tables, quantized weights) are never recorded, hence never
// recycled. The recycled tensors are disposed, so a stray use of one throws instead of reading reused
// memory; a raw array captured past the scope is what the poison mode (DSV3_POISON_RECYCLED=1, NaN
// written into every buffer handed back to the free list) exists to catch.
import {
  issuedSince,
  type MemoryKey,
  memoryKey,
  recycleStorage,
  startRecyclingEpoch,
  wholeMemory,
} from './cpu/pool.js';
import type { Tensor } from './tensor.js';
import { forEachReachable } from './reachable.js';

export interface RecyclingScopeOptions {
  /**
   * Objects whose tensors must survive the scope (a model, optimizers): their fields are walked
   * (objects, arrays, Maps, Sets) and every tensor found, with its .grad, is kept. Tensors held only
   * in closures or WeakMaps are not found: a graph built in the scope cannot be back-propagated
   * after it ends.
   */
  keep?: readonly unknown[];
}

class Scope {
  readonly epoch = startRecyclingEpoch();
  readonly recorded: Tensor[] = [];
  /** Another scope closed while this one was open (interleaved async work): it must not recycle. */
  tainted = false;
  constructor(readonly keep: readonly unknown[]) {}
}

const scopes: Scope[] = [];
const totals = { scopes: 0, buffers: 0, bytes: 0 };

/** What the recycling scopes closed so far handed back (for tests and benchmarks). */
export function recyclingScopeTotals(): { scopes: number; buffers: number; bytes: number } {
  return { ...totals };
}

/** Called by autograd's record(): `out` is an activation of the innermost open scope, if any. */
export function trackRecorded(out: Tensor): void {
  const s = scopes[scopes.length - 1];
  if (s) s.recorded.push(out);
}

/**
 * Runs `fn` in a recycling scope: when it returns, the buffers of the activations recorded inside it
 * (tensors with a gradFn) that nothing kept reaches go back to the CPU free list, and those tensors
 * are disposed. What `fn` returns and what `opts.keep` reaches survives. If `fn` throws nothing is
 * recycled. Scopes nest: what an inner scope keeps is the outer scope's to recycle.
 */
export function recyclingScope<T>(fn: () => T, opts: RecyclingScopeOptions = {}): T {
  const scope = open(opts);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    abandon(scope);
    throw e;
  }
  close(scope, result);
  return result;
}

/** recyclingScope for async work; the scope is global, so no other recording work may interleave. */
export async function recyclingScopeAsync<T>(fn: () => Promise<T>, opts: RecyclingScopeOptions = {}): Promise<T> {
  const scope = open(opts);
  let result: T;
  try {
    result = await fn();
  } catch (e) {
    abandon(scope);
    throw e;
  }
  close(scope, result);
  return result;
}

function open(opts: RecyclingScopeOptions): Scope {
  const scope = new Scope(opts.keep ?? []);
  scopes.push(scope);
  return scope;
}

const OUT_OF_ORDER =
  'recyclingScope: scopes closed out of order (async work interleaved with a recycling scope); nothing was recycled';

/**
 * Takes `scope` off the stack. Closed while a later scope is open means other work interleaved: the
 * later scopes hold tensors of both, so none of them may recycle (they throw when they close, too).
 */
function pop(scope: Scope): void {
  const i = scopes.indexOf(scope);
  if (scope.tainted || i !== scopes.length - 1) {
    for (const later of scopes.slice(i + 1)) later.tainted = true;
    abandon(scope);
    throw new Error(OUT_OF_ORDER);
  }
  scopes.pop();
}

/** Leaves the scope without recycling; its activations are the outer scope's (or the collector's). */
function abandon(scope: Scope): void {
  const i = scopes.indexOf(scope);
  if (i >= 0) scopes.splice(i, 1);
  const outer = scopes[scopes.length - 1];
  if (outer) outer.recorded.push(...scope.recorded);
}

function close(scope: Scope, result: unknown): void {
  pop(scope);
  const kept = keptBuffers([result, ...scope.keep]);
  const recycled = new Set<MemoryKey>();
  const outer = scopes[scopes.length - 1];
  for (const t of scope.recorded) {
    if (t.disposed) continue;
    const mem = wholeMemory(t.storage);
    if (mem !== null && !kept.has(mem) && !recycled.has(mem) && issuedSince(t.storage, scope.epoch)) {
      if (recycleStorage(t.storage, scope.epoch)) {
        recycled.add(mem);
        totals.bytes += t.storage.byteLength;
      }
    }
  }
  totals.scopes++;
  totals.buffers += recycled.size;
  for (const t of scope.recorded) {
    if (t.disposed) continue;
    const mem = memoryKey(t.storage);
    if (mem !== null && recycled.has(mem)) t.dispose();
    else if (outer) outer.recorded.push(t);
  }
}

/** The memory (whole or viewed, by memoryKey) of every tensor reachable from `roots`. */
function keptBuffers(roots: readonly unknown[]): Set<MemoryKey> {
  const kept = new Set<MemoryKey>();
  // a tensor's graph is not kept: see RecyclingScopeOptions.keep
  forEachReachable(roots, (t) => {
    const mem = t.disposed ? null : memoryKey(t.storage);
    if (mem !== null) kept.add(mem);
  });
  return kept;
}
