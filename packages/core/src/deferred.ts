// Output arrays a backend is still computing off the calling thread: the CPU GEMM's deferred weight
// gradients (cpu/gemm/deferred-products.ts, open only during core's backward pass, which finishes them
// before it returns) and AdamW's updates run in the background (cpu/background-updates.ts, open only
// inside backgroundUpdates, finished when something first touches a parameter). Whatever may read or
// reuse a pending array finishes it first: exec checks its inputs, the CPU backend's reads, the free
// list and the release of engine memory check theirs. Pending work may also read arrays where they
// lie (`reads` tells which): nothing overwrites or releases such an array before finishing that work.

/** A kind of work that leaves outputs pending (one per kind, registered by markDeferred). */
export interface DeferredWork {
  /** Completes `out` (at least) and settles every output it wrote; none given: everything pending. */
  finish(out?: object): void;
  /** Whether work still pending reads `a` (a backend's array) in place. */
  reads(a: object): boolean;
}

const pending = new Map<object, DeferredWork>();
const kinds = new Set<DeferredWork>();
/** Backward passes (core's) under way: products are deferred only inside one, which finishes them. */
let passes = 0;
/** backgroundUpdates scopes under way: optimizer updates are posted to the background only inside one. */
let updateScopes = 0;

/**
 * Runs `pass` (a backward pass) with deferral allowed, and finishes every pending output before it
 * returns or throws. Other walkers (@dsv3/parallel's) leave it closed, so their products run at once.
 */
export function deferringPass<T>(pass: () => T): T {
  passes++;
  try {
    return pass();
  } finally {
    passes--;
    finishDeferred();
  }
}

/** Whether a backend may defer an output now (inside deferringPass). */
export function deferralOpen(): boolean {
  return passes > 0;
}

/**
 * Runs `update` (an optimizer step) with background updates allowed: the backend may leave the updated
 * parameters pending after it returns, each finished when something first reads or writes it (a
 * training step's next forward), or all by finishDeferred().
 */
export function backgroundUpdates<T>(update: () => T): T {
  updateScopes++;
  try {
    return update();
  } finally {
    updateScopes--;
  }
}

/** Whether a backend may leave an optimizer update pending now (inside backgroundUpdates). */
export function backgroundUpdatesOpen(): boolean {
  return updateScopes > 0;
}

/** Records that `out` is written later by `work` (which settles it once written). */
export function markDeferred(out: object, work: DeferredWork): void {
  pending.set(out, work);
  kinds.add(work);
}

/** Whether pending work reads `a` (a backend's array) in place, so that it must not change yet. */
export function readByDeferred(a: object | undefined): boolean {
  if (a === undefined || pending.size === 0) return false;
  for (const w of kinds) if (w.reads(a)) return true;
  return false;
}

/** Whether any output is pending (cheap: checked on every op). */
export function anyDeferred(): boolean {
  return pending.size > 0;
}

/** Whether `out` is an output still pending. */
export function isDeferred(out: object | undefined): boolean {
  return out !== undefined && pending.has(out);
}

/** Completes `out` (and what its work must complete with it); none given: every pending output. */
export function finishDeferred(out?: object): void {
  if (pending.size === 0) return;
  if (out !== undefined) {
    pending.get(out)?.finish(out);
    return;
  }
  for (const w of kinds) w.finish();
}

/** Before `a` is overwritten or released: completes it if pending, and the work that reads it in place. */
export function finishTouching(a: object): void {
  if (pending.size === 0) return;
  finishDeferred(a);
  for (const w of kinds) if (w.reads(a)) w.finish();
}

/** Called once outputs are written: those listed, or (none listed) every one `work` left pending. */
export function settleDeferred(work: DeferredWork, outs?: Iterable<object>): void {
  if (outs) for (const o of outs) pending.delete(o);
  else for (const [o, w] of pending) if (w === work) pending.delete(o);
}
