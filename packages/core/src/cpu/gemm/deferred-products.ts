// Products run on the engine's worker threads in the background while the calling thread goes on: a
// backward pass's weight gradients, which nothing reads until the pass ends, so the worker computes
// them during the pass's serial JavaScript (elementwise passes, norms, routing) instead of idling.
// Each product's operands are copied into a block of the engine's memory when it is posted (the
// caller may reuse its arrays at once); its C is written into the caller's array only by finish(),
// which everything that reads such an array calls first (see core/src/deferred.ts). A product runs
// whole on one thread with the kernel a job's product uses (TASK_GEMM_OWN_B), so its C is bitwise
// one sgemm call's.
import { align } from './arena.js';
import { type Gemm, storedSpans } from './args.js';
import { gemmConfig } from './config.js';
import { copyProductOut, runsAlone, writeOwnBTask } from './gemm-many.js';
import { inOutputBlock } from '../resident-outputs.js';
import type { WasmGemm } from './wasm-engine.js';
import { BACKGROUND_TABLE, MAX_BACKGROUND, TABLE, TASK_INTS } from './worker-pool.js';

interface Posted {
  g: Gemm;
  /** byte offset of its padded C in the block, and C's row pitch there (elements) */
  cAt: number;
  ldc: number;
}

export class DeferredProducts {
  /** The staging block (arena), reused from round to round; it grows only between rounds. */
  private block = { at: 0, bytes: 0 };
  private used = 0;
  /** Bytes staged since the last finish() from outside (rounds collected early included): the block a pass needs. */
  private demand = 0;
  private posted: Posted[] = [];

  constructor(
    private readonly e: WasmGemm,
    /** Told which outputs each finish() wrote (they stop being pending). */
    private readonly wrote: (outs: Float32Array[]) => void,
  ) {}

  /** Products posted and not yet finished. */
  get pending(): number {
    return this.posted.length;
  }

  /**
   * Posts C = op(A)·op(B) for the workers and returns true, or returns false (nothing done) when it
   * should run now: one thread, no workers, a product the single call routes elsewhere (GEMV rows,
   * batches), one too small to be worth a hand-off, or no room in the engine's memory.
   */
  defer(g: Gemm, threads: number): boolean {
    const e = this.e;
    if (threads <= 1 || !e.canThread() || g.batch !== 1 || g.k === 0 || g.m === 0 || g.n === 0 || runsAlone(g))
      return false;
    if (g.m * g.n * g.k < gemmConfig.threadMinWork) return false;
    const { mr, nr } = e.cfg;
    const [aSpan, bSpan] = storedSpans(g);
    // Read in place only what nothing rewrites during the pass (resident weights): kernel outputs in
    // that memory are staged like host arrays — read in place, the mini preset's losses differed from
    // the staged run's (docs/benchmarks.md, issue 11, thirteenth session).
    const aIn = e.arena.owns(g.a) && !inOutputBlock(g.a),
      bIn = e.arena.owns(g.b) && !inOutputBlock(g.b);
    const ldc = align(g.n, nr);
    const need = (aIn ? 0 : align(aSpan * 4)) + (bIn ? 0 : align(bSpan * 4)) + align(align(g.m, mr) * ldc * 4);
    const noRoom = this.used + need > this.block.bytes;
    if (noRoom || this.posted.length === MAX_BACKGROUND) {
      // Full: collect this round early, then (nothing in flight) make room for everything this pass
      // staged so far, so that the next pass of the same products fits in one round.
      this.collect();
      if (noRoom && !this.grow(Math.max(need, this.demand + need))) return false;
    }
    this.demand += need;
    const heap = e.heap();
    const base = this.block.at;
    const take = (bytes: number): number => {
      const at = this.used;
      this.used += align(bytes);
      return at;
    };
    const stage = (arr: Float32Array, off: number, span: number): number => {
      const at = base + take(span * 4);
      heap.set(arr.subarray(off, off + span), at / 4);
      return at;
    };
    const a = aIn ? g.a.byteOffset + g.aOffset * 4 : stage(g.a, g.aOffset, aSpan);
    const b = bIn ? g.b.byteOffset + g.bOffset * 4 : stage(g.b, g.bOffset, bSpan);
    const cAt = take(align(g.m, mr) * ldc * 4);
    const entry = TABLE + (BACKGROUND_TABLE + this.posted.length) * TASK_INTS;
    writeOwnBTask(e.taskTable(), entry, g, 0, g.m, a, b, base + cAt, ldc);
    this.posted.push({ g, cAt, ldc });
    e.postBackground(threads);
    return true;
  }

  /** Waits for every posted product (running those no worker took) and writes each C where its caller wants it. */
  finish(): void {
    this.collect();
    // A pass that outgrew the block gets one that holds it all (nothing is in flight now).
    if (this.demand > this.block.bytes) this.grow(this.demand);
    this.demand = 0;
  }

  private collect(): void {
    if (this.posted.length === 0) return;
    const posted = this.posted;
    this.posted = [];
    this.used = 0;
    this.e.finishBackground(posted.length);
    const heap = this.e.heap();
    for (const { g, cAt, ldc } of posted) copyProductOut(heap, (this.block.at + cAt) / 4, ldc, g);
    this.wrote(posted.map((p) => p.g.c));
  }

  /** A staging block of `bytes` (none is in use); false when the engine's memory has no room. */
  private grow(bytes: number): boolean {
    if (this.block.bytes) this.e.arena.release(this.block.at);
    this.block = { at: 0, bytes: 0 };
    const at = this.e.arena.alloc(bytes);
    if (at === null) return false;
    this.block = { at, bytes };
    return true;
  }
}
