// Output arrays a backend is still computing off the calling thread (the CPU GEMM's deferred weight
// gradients, cpu/gemm/deferred-products.ts). Deferral is open only during core's backward pass, which
// finishes them before it returns, so no caller outside the pass ever sees one unfinished; inside it,
// whatever may read or reuse one finishes them all first: exec checks its inputs, the CPU backend's
// reads and the free list check theirs. A pending product may also read its operands where they lie
// (`reader` tells which arrays): the backward pass does not sum into such an array in place.
const pending = new Set<object>();
let finisher: (() => void) | null = null;
let reader: ((a: object) => boolean) | null = null;
/** Backward passes (core's) under way: products are deferred only inside one, which finishes them. */
let passes = 0;

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
 * Records that `out` is written later by `finish` (it, or whatever writes `out`, calls settleDeferred);
 * `reads` tells whether a pending product reads an array in place.
 */
export function markDeferred(out: object, finish: () => void, reads: (a: object) => boolean): void {
  pending.add(out);
  finisher = finish;
  reader = reads;
}

/** Whether a pending product reads `a` (a backend's array) in place, so that it must not change yet. */
export function readByDeferred(a: object | undefined): boolean {
  return a !== undefined && pending.size > 0 && reader!(a);
}

/** Whether any output is pending (cheap: checked on every op). */
export function anyDeferred(): boolean {
  return pending.size > 0;
}

/** Whether `out` is an output still pending. */
export function isDeferred(out: object | undefined): boolean {
  return out !== undefined && pending.has(out);
}

/** Completes every pending output. */
export function finishDeferred(): void {
  if (pending.size > 0) finisher!();
}

/** Called once outputs are written: those listed, or (none listed) every pending one. */
export function settleDeferred(outs?: Iterable<object>): void {
  if (!outs) pending.clear();
  else for (const o of outs) pending.delete(o);
}
