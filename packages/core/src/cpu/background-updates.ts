// AdamW's updates run on the engine's workers in the background (optimizer-jobs.ts posts them here
// inside core's backgroundUpdates scope): a training step's optimizer update then runs while the
// calling thread is already in the next step's forward, whose serial passes leave the worker idle.
// Each parameter's weight and moments stay pending (core/src/deferred.ts) until something touches one
// of them — an op taking the weight as an input (the forward's first use), a read-back, a checkpoint,
// the release or reuse of their memory — which finishes that parameter's tasks (the caller runs those
// no worker has claimed, out of order: the forward reads the first layers' norms long before the LM
// head). Its gradient is read in place, so whatever overwrites or releases it finishes the updates
// first. Tasks are adamwRows calls on ranges of one parameter, the synchronous job's kernel and
// arguments: each element's update is independent of the split and the thread, so bitwise the same.
import { type DeferredWork, markDeferred, settleDeferred } from '../deferred.js';
import { align } from './gemm/arena.js';
import { effectiveThreads, engineOwning } from './gemm/runtime.js';
import type { WasmGemm } from './gemm/wasm-engine.js';
import { ROW_KERNELS } from './gemm/row-kernel-task.js';
import { BACKGROUND_TABLE, MAX_BACKGROUND, TABLE, TASK_INTS, TASK_ROW_KERNEL } from './gemm/worker-pool.js';
import { ADAMW_CONSTANTS } from './optimizer-rows-simd.js';

/** One adamwRows call: its seven arguments (byte addresses, count, constants, bf16 flag). */
export type AdamwRowArgs = readonly [number, number, number, number, number, number, number];

/** A parameter's update as posted: its outputs, its tasks' indices in the queue, its gradient's bytes. */
interface Posted {
  outs: readonly object[];
  first: number;
  end: number;
  /** Byte ranges [from, to) of the engine's memory its tasks read or write: w, m, v, and g when read in place. */
  ranges: number[];
  done: boolean;
}

/**
 * One parameter's update: its outputs (w, m, v), its gradient, and its tasks' adamwRows arguments with
 * g's address relative to the gradient's start (a gradient in the engine's memory is read in place, a
 * host one copied into the post's block) and the constants' left out (the post's block).
 */
export interface ParameterUpdate {
  /** The arrays behind w, m and v as their storages hold them (what readers see) and the storages. */
  stored: readonly { array: ArrayBufferView; storage: object }[];
  g: Float32Array;
  tasks: readonly AdamwRowArgs[];
}

/** Bench diagnostics: update tasks posted, and how each was found when its parameter was first touched. */
export const backgroundUpdateStats = { tasks: 0, ranHere: 0, done: 0, waited: 0 };
/**
 * Tests: `unpublished` leaves posted tasks unseen by the workers, so each runs when its parameter is first
 * touched, and a read that is not hooked reads the old value every time, not only when the worker lags.
 */
export const backgroundUpdateTesting = { unpublished: false };

const ADAMW_ROWS = ROW_KERNELS.indexOf('adamwRows');
const CONSTS_BYTES = 8 * ADAMW_CONSTANTS.length;

class BackgroundUpdates implements DeferredWork {
  private posted: Posted[] = [];
  private tasks = 0;
  private left = 0;
  private readonly byOut = new Map<object, Posted>();
  /** Arena blocks holding each post's constants, released once the queue is empty. */
  private blocks: number[] = [];
  /** What must stay alive while tasks may write it (the outputs' storages). */
  private keep: object[] = [];

  constructor(private readonly e: WasmGemm) {}

  get pending(): boolean {
    return this.tasks > 0;
  }

  /**
   * Posts `updates` with AdamW's f64 `constants`; false (nothing posted) when they cannot run in the
   * background here: one thread, no room in the queue or the engine's memory.
   */
  post(updates: readonly ParameterUpdate[], constants: readonly number[]): boolean {
    const e = this.e;
    const threads = effectiveThreads(e);
    const count = updates.reduce((s, u) => s + u.tasks.length, 0);
    if (threads <= 1 || !e.canThread() || count === 0 || count > MAX_BACKGROUND) return false;
    if (this.tasks + count > MAX_BACKGROUND) this.finish();
    // The block: the constants, then the host gradients (a few norms' and gates' in a training step).
    const host = updates.filter((u) => engineOwning(u.g) !== e);
    const at = e.arena.alloc(CONSTS_BYTES + host.reduce((s, u) => s + align(u.g.byteLength), 0));
    if (at === null) return false;
    const heap = e.heap();
    new Float64Array(heap.buffer, at, constants.length).set(constants);
    const gAt = new Map<ParameterUpdate, number>();
    let staged = at + CONSTS_BYTES;
    for (const u of host) {
      heap.set(u.g, staged / 4);
      gAt.set(u, staged);
      staged += align(u.g.byteLength);
    }
    this.blocks.push(at);
    const table = e.taskTable();
    let j = this.tasks;
    for (const u of updates) {
      const g = gAt.get(u) ?? u.g.byteOffset;
      // a gradient read in place: whatever overwrites or releases it finishes this update first
      const ranges: number[] = gAt.has(u) ? [] : [g, g + u.g.byteLength];
      for (const { array } of u.stored) {
        ranges.push(array.byteOffset, array.byteOffset + array.byteLength);
      }
      const p: Posted = {
        outs: u.stored.map((s) => s.array),
        first: j,
        end: j + u.tasks.length,
        ranges,
        done: false,
      };
      for (const [w, gRel, m, v, n, , bf16] of u.tasks) {
        const o = TABLE + (BACKGROUND_TABLE + j++) * TASK_INTS;
        table.fill(0, o, o + TASK_INTS);
        table.set([TASK_ROW_KERNEL, ADAMW_ROWS, 7, w, g + gRel, m, v, n, at, bf16], o);
      }
      this.posted.push(p);
      this.left++;
      for (const { array, storage } of u.stored) {
        this.byOut.set(array, p);
        this.keep.push(storage);
        markDeferred(array, this);
      }
    }
    this.tasks = j;
    backgroundUpdateStats.tasks += count;
    if (!backgroundUpdateTesting.unpublished) e.postBackground(threads, count);
    return true;
  }

  finish(out?: object): void {
    if (out !== undefined) {
      const p = this.byOut.get(out);
      if (!p) return;
      try {
        this.finishOne(p);
      } finally {
        if (this.left === 0) this.collect();
      }
      return;
    }
    try {
      for (const p of this.posted) this.finishOne(p);
    } finally {
      this.collect();
    }
  }

  reads(a: object): boolean {
    if (this.left === 0 || !ArrayBuffer.isView(a) || engineOwning(a) !== this.e) return false;
    const from = a.byteOffset,
      to = from + a.byteLength;
    for (const p of this.posted) {
      if (p.done) continue;
      const r = p.ranges;
      for (let i = 0; i < r.length; i += 2) if (r[i]! < to && from < r[i + 1]!) return true;
    }
    return false;
  }

  private finishOne(p: Posted): void {
    if (p.done) return;
    p.done = true;
    this.left--;
    settleDeferred(this, p.outs);
    for (const o of p.outs) this.byOut.delete(o);
    for (let j = p.first; j < p.end; j++) {
      const how = this.e.finishBackgroundTask(j);
      backgroundUpdateStats[how === 'ran here' ? 'ranHere' : how]++;
    }
  }

  /** Every task done: empties the queue and releases the constants. */
  private collect(): void {
    if (this.tasks === 0) return;
    const tasks = this.tasks;
    this.tasks = 0;
    this.left = 0;
    this.posted = [];
    this.byOut.clear();
    this.keep = [];
    settleDeferred(this);
    try {
      this.e.finishBackground(tasks, 'background updates finish');
    } finally {
      for (const at of this.blocks) this.e.arena.release(at);
      this.blocks = [];
    }
  }
}

const updatesOf = new Map<WasmGemm, BackgroundUpdates>();

/** Posts `updates` to `e`'s background queue (see BackgroundUpdates.post); false: run them now instead. */
export function postUpdates(e: WasmGemm, updates: readonly ParameterUpdate[], constants: readonly number[]): boolean {
  let u = updatesOf.get(e);
  if (!u) updatesOf.set(e, (u = new BackgroundUpdates(e)));
  return u.post(updates, constants);
}

/** Completes every update still pending on `e` (before other work takes its background queue). */
export function finishUpdates(e: WasmGemm): void {
  const u = updatesOf.get(e);
  if (u?.pending) u.finish();
}
