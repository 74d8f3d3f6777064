// Define-by-run reverse-mode autodiff: every differentiable op records a node on its output;
// backward() walks the recorded graph in reverse topological order and accumulates gradients.
import {
  issuedSince,
  type MemoryKey,
  memoryKey,
  recycleStorage,
  startRecyclingEpoch,
  wholeMemory,
} from './cpu/pool.js';
import { hasKernel } from './backend.js';
import { deferringPass, readByDeferred } from './deferred.js';
import { exec } from './ops/exec.js';
import { addOpTime, opClock, opProfiling } from './ops/profile.js';
import { addToKeptGradient } from './kept-grads.js';
import { trackRecorded } from './recycling-scope.js';
import type { Tensor } from './tensor.js';

export interface GradNode {
  readonly op: string;
  readonly inputs: readonly Tensor[];
  /** Given d(loss)/d(output), returns d(loss)/d(input) per input (null where none flows). */
  backward(gradOutput: Tensor): (Tensor | null | undefined)[];
  /**
   * Optional: like `backward`, but each input's gradient as its separate contributions, in the order
   * the graph this node stands for would have produced them (recomputation). backward() adds them to
   * the input's pending gradient one by one, so the sums round exactly as without the node.
   */
  backwardParts?(gradOutput: Tensor): (readonly Tensor[] | null | undefined)[];
}

let enabled = true;

export function isGradEnabled(): boolean {
  return enabled;
}

/** Runs `fn` without recording anything for autograd (inference, optimizer updates). */
export function noGrad<T>(fn: () => T): T {
  const prev = enabled;
  enabled = false;
  try {
    return fn();
  } finally {
    enabled = prev;
  }
}

/** Runs `fn` with recording on, even inside noGrad or a backward pass (activation recomputation). */
export function withGrad<T>(fn: () => T): T {
  const prev = enabled;
  enabled = true;
  try {
    return fn();
  } finally {
    enabled = prev;
  }
}

/**
 * noGrad for async work (inference that awaits GPU reads): recording stays off until the promise
 * settles. The switch is global, so other async work interleaved meanwhile is not recorded either.
 */
export async function noGradAsync<T>(fn: () => Promise<T>): Promise<T> {
  const prev = enabled;
  enabled = false;
  try {
    return await fn();
  } finally {
    enabled = prev;
  }
}

/** Attaches a node to `out` when recording is on and some input needs a gradient. */
export function record(
  out: Tensor,
  op: string,
  inputs: readonly Tensor[],
  backward: GradNode['backward'],
  backwardParts?: GradNode['backwardParts'],
): Tensor {
  if (enabled && inputs.some((t) => t.requiresGrad)) {
    out.requiresGrad = true;
    out.gradFn = backwardParts ? { op, inputs, backward, backwardParts } : { op, inputs, backward };
    trackRecorded(out);
  }
  return out;
}

/**
 * The tensors of `root`'s graph that need a gradient, root first, each before its inputs (the order
 * backward passes visit them). `leaves: false` leaves out tensors without a gradFn.
 */
export function topoOrder(root: Tensor, opts: { leaves?: boolean } = {}): Tensor[] {
  const leaves = opts.leaves ?? true;
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  // Iterative DFS: graphs of deep models overflow the JS stack with recursion.
  const stack: [Tensor, boolean][] = [[root, false]];
  while (stack.length) {
    const [t, done] = stack.pop()!;
    if (done) {
      order.push(t);
      continue;
    }
    if (seen.has(t)) continue;
    seen.add(t);
    stack.push([t, true]);
    for (const i of t.gradFn?.inputs ?? [])
      if (i.requiresGrad && (leaves || i.gradFn) && !seen.has(i)) stack.push([i, false]);
  }
  return order.reverse();
}

// Gradients a backward pass proved to be their tensor's alone (the buffer was issued during a pass
// and no other gradient or the seed shares it), by gradient → the tensor whose .grad it is. Those are
// changed in place (accumulation, clipping) and recycled by zeroGrad; any other .grad is left as is.
const ownedGrads = new WeakMap<Tensor, Tensor>();

/**
 * Whether a backward pass only sums t's gradient into t.grad (a leaf that keeps no intermediate
 * gradient): no rule of the pass reads it, so a backend may compute it in the background (deferred.ts).
 */
export function onlyAccumulatesGrad(t: Tensor): boolean {
  return !t.gradFn && !t.retainsGrad;
}

/** Whether t.grad is t's alone (made by a backward pass and not shared), so it may be changed in place. */
export function ownsGrad(t: Tensor): boolean {
  const g = t.grad;
  return g !== null && !g.disposed && ownedGrads.get(g) === t && !g.sharesStorage;
}

/**
 * Multiplies t.grad by `factor` (a one-element tensor): in place where t owns its gradient and the
 * backend can, else as a new tensor.
 */
export function scaleGrad(t: Tensor, factor: Tensor): void {
  const g = t.grad!;
  const f = factor.dtype === g.dtype ? factor : factor.cast(g.dtype);
  if (ownsGrad(t) && hasKernel('scaleInPlace', g.backend.name)) exec('scaleInPlace', [g, f], {});
  else t.grad = noGrad(() => g.mul(f));
}

/**
 * Adds `g` into t.grad: into t's kept buffer (keepGradientIn), else in place where t owns its gradient
 * and the backend can, else as `grad + g` (the same sums, rounded alike, either way). Returns whether `g`
 * itself became t.grad (the first contribution of a leaf without a kept buffer).
 */
export function accumulateGrad(t: Tensor, g: Tensor): boolean {
  if (addToKeptGradient(t, g)) return false;
  if (t.grad && ownsGrad(t) && g.dtype === t.grad.dtype && hasKernel('addInPlace', g.backend.name)) {
    exec('addInPlace', [t.grad, g], {});
    return false;
  }
  if (t.grad) {
    const sum = t.grad;
    t.grad = noGrad(() => sum.add(g));
    return false;
  }
  t.grad = g;
  return true;
}

/** Moves `from`'s gradient to `to` (a parameter taking a new tensor), ownership included. */
export function moveGrad(from: Tensor, to: Tensor): void {
  const g = from.grad;
  const owned = ownsGrad(from);
  from.grad = null;
  to.grad = g;
  if (g && owned) ownedGrads.set(g, to);
}

/** Drops t.grad (zeroGrad): a gradient t owns goes back to the kernels' free list for the next pass. */
export function dropGrad(t: Tensor): void {
  const g = t.grad;
  if (!g) return;
  if (ownsGrad(t)) recycleStorage(g.storage, 0);
  g.dispose();
  t.grad = null;
}

/**
 * The CPU gradient buffers a backward pass still references (pending gradients, and those kept
 * as leaves' .grad or the caller's seed), so that gradients it has finished with go back to the
 * kernels' free list instead of waiting for the garbage collector.
 */
class GradientBuffers {
  readonly epoch = startRecyclingEpoch();
  private readonly refs = new Map<MemoryKey, number>();
  private readonly kept = new Set<MemoryKey>();

  private count(t: Tensor, by: number): void {
    const b = t.disposed ? null : wholeMemory(t.storage);
    if (b !== null) this.refs.set(b, (this.refs.get(b) ?? 0) + by);
  }
  hold(t: Tensor): void {
    this.count(t, 1);
  }
  release(t: Tensor): void {
    this.count(t, -1);
  }
  keep(t: Tensor): void {
    const b = t.disposed ? null : wholeMemory(t.storage);
    if (b !== null) this.kept.add(b);
  }
  /**
   * Whether `pending` (a pending gradient, f32 or f64) may be overwritten by `pending + other`: the
   * conditions under which recycleIfDead would recycle it once the sum replaced it (its whole buffer,
   * issued during this pass, held once, not kept), `other` on another buffer, and no deferred product
   * reading it (the sum then goes to a new buffer rather than wait for that product).
   */
  soleHolder(pending: Tensor, other: Tensor): boolean {
    if (pending.disposed || other.disposed || (pending.dtype !== 'f32' && pending.dtype !== 'f64')) return false;
    if (pending.dtype !== other.dtype) return false;
    const b = wholeMemory(pending.storage);
    if (b === null || this.kept.has(b) || this.refs.get(b) !== 1 || !issuedSince(pending.storage, this.epoch))
      return false;
    // a weight gradient still reading it in the background (a residual's gradient handed on as is)
    if (readByDeferred((pending.storage as { data?: object }).data)) return false;
    return memoryKey(other.storage) !== b;
  }
  /** Recycles t's buffer when nothing of this pass references it (else leaves it to the GC). */
  recycleIfDead(t: Tensor): void {
    if (t.disposed) return;
    const b = wholeMemory(t.storage);
    if (b === null || this.kept.has(b) || (this.refs.get(b) ?? 0) > 0) return;
    const s = t.storage;
    if (recycleStorage(s, this.epoch)) t.dispose();
  }
}

/**
 * Back-propagates from `root`. Leaf tensors that require grad accumulate into `.grad` (so calling
 * backward on several losses sums their gradients); intermediate gradients are dropped.
 */
export function backward(root: Tensor, gradient?: Tensor): void {
  run(root, gradient, null);
}

/**
 * backward() that leaves `input` (a leaf) alone and returns the gradient contributions that reach it,
 * unsummed, in the order backward() would have added them (for recomputation: the caller hands them
 * on, so they are summed together with the outer graph's contributions exactly as without it).
 */
export function backwardContributions(root: Tensor, gradient: Tensor, input: Tensor): Tensor[] {
  const parts: Tensor[] = [];
  run(root, gradient, { input, parts });
  return parts;
}

function run(root: Tensor, gradient: Tensor | undefined, sink: { input: Tensor; parts: Tensor[] } | null): void {
  if (!root.requiresGrad)
    throw new Error(
      'backward() on a tensor that does not require grad (no parameter reached it, or it was computed under noGrad)',
    );
  if (!gradient && root.size !== 1)
    throw new Error(`backward() without a gradient needs a scalar, got shape [${root.shape.join(', ')}]`);
  const grads = new Map<Tensor, Tensor>();
  const buffers = new GradientBuffers();
  const seed = gradient ?? root.onesLike();
  buffers.keep(seed); // the caller's
  // Accumulates into a leaf's (or retained) .grad, which outlives the pass.
  const touched = new Set<Tensor>();
  const accumulate = (t: Tensor, g: Tensor): void => {
    if (!accumulateGrad(t, g)) buffers.recycleIfDead(g);
    buffers.keep(t.grad!);
    touched.add(t);
  };
  // Adds one contribution to inp's pending gradient (or hands it to the sink); `dead` collects the
  // buffers the addition left unreferenced.
  const add = (inp: Tensor, gi: Tensor, op: string, i: number, dead: Tensor[]): void => {
    if (gi.shape.length !== inp.shape.length || gi.shape.some((d, k) => d !== inp.shape[k])) {
      throw new Error(
        `internal: gradient of ${op} input ${i} has shape [${gi.shape.join(', ')}], expected [${inp.shape.join(', ')}]`,
      );
    }
    if (sink && inp === sink.input) {
      sink.parts.push(gi);
      buffers.keep(gi); // the caller's now
      return;
    }
    const prev = grads.get(inp);
    // A pending sum this pass alone holds takes the contribution in place (the same sums, rounded
    // alike): no output buffer, which the free list often lacks mid-backward (a fresh one costs its
    // page faults).
    if (prev && buffers.soleHolder(prev, gi) && hasKernel('addInPlace', prev.backend.name)) {
      exec('addInPlace', [prev, gi], {});
      dead.push(gi);
      return;
    }
    const next = prev ? prev.add(gi) : gi;
    grads.set(inp, next);
    buffers.hold(next);
    if (prev) {
      buffers.release(prev);
      dead.push(prev, gi);
    }
  };
  if (sink && root === sink.input) sink.parts.push(seed);
  else {
    grads.set(root, seed);
    buffers.hold(seed);
  }
  // Weight products a backend may defer (deferred.ts) are finished when the pass returns.
  deferringPass(() =>
    noGrad(() => {
      for (const t of topoOrder(root)) {
        const g = grads.get(t);
        if (!g) continue;
        grads.delete(t);
        buffers.release(g);
        if (!t.gradFn) {
          accumulate(t, g);
          continue;
        }
        if (t.retainsGrad) accumulate(t, g);
        const node = t.gradFn;
        const t0 = opProfiling() ? opClock() : 0;
        const dead: Tensor[] = [g];
        if (node.backwardParts) {
          const gin = node.backwardParts(g);
          if (opProfiling()) addOpTime(`grad:${node.op}`, opClock() - t0);
          node.inputs.forEach((inp, i) => {
            const parts = gin[i] ?? [];
            if (!inp.requiresGrad) dead.push(...parts);
            else for (const gi of parts) add(inp, gi, node.op, i, dead);
          });
        } else {
          const gin = node.backward(g);
          if (opProfiling()) addOpTime(`grad:${node.op}`, opClock() - t0);
          node.inputs.forEach((inp, i) => {
            const gi = gin[i];
            if (!gi) return;
            if (!inp.requiresGrad) dead.push(gi);
            else add(inp, gi, node.op, i, dead);
          });
        }
        for (const d of dead) buffers.recycleIfDead(d);
      }
    }),
  );
  claimGrads(touched, [seed, ...(sink?.parts ?? [])], buffers.epoch);
}

/**
 * Marks the gradients this pass left in `touched` tensors' .grad that each tensor alone holds: buffers
 * issued during the pass (or already owned) that no other .grad and none of `handedOut` (the seed, the
 * contributions a recomputation hands back) shares.
 */
function claimGrads(touched: Set<Tensor>, handedOut: readonly Tensor[], epoch: number): void {
  const holders = new Map<MemoryKey, number>();
  const count = (t: Tensor): void => {
    const b = t.disposed ? null : wholeMemory(t.storage);
    if (b !== null) holders.set(b, (holders.get(b) ?? 0) + 1);
  };
  for (const t of handedOut) count(t);
  for (const t of touched) count(t.grad!);
  for (const t of touched) {
    const g = t.grad!;
    const b = g.disposed ? null : wholeMemory(g.storage);
    const fresh = ownsGrad(t) || (b !== null && issuedSince(g.storage, epoch) && !g.sharesStorage);
    if (fresh && holders.get(b!) === 1) ownedGrads.set(g, t);
    else ownedGrads.delete(g);
  }
}
