// Products run on the engine's worker threads in the background while the calling thread goes on: a
// backward pass's weight gradients, which nothing reads until the pass ends, so the worker computes
// them during the pass's serial JavaScript (elementwise passes, norms, routing) instead of idling.
// Each product's operands are copied into a block of the engine's memory when it is posted (the
// caller may reuse its arrays at once), except those already in that memory, which it reads in place:
// whatever overwrites such an array before the pass ends — the free list reusing it, a gradient summed
// or scaled in its buffer — runs the products first (finishProductsReading). Its C is copied into the
// caller's array by finish() — or written there by the worker, when it lies in that memory as whole
// micro-tiles — and everything that reads such an array calls finish() first (core/src/deferred.ts). A product runs
// whole on one thread with the kernel a job's product uses (TASK_GEMM_OWN_B), so its C is bitwise
// one sgemm call's.
import { align } from './arena.js';
import { type Gemm, storedSpans } from './args.js';
import { gemmConfig } from './config.js';
import { copyProductOut, runsAlone, writeOwnBTask, writesCInPlace } from './gemm-many.js';
import type { WasmGemm } from './wasm-engine.js';
import { BACKGROUND_TABLE, MAX_BACKGROUND, TABLE, TASK_INTS } from './worker-pool.js';

interface Posted {
  g: Gemm;
  /** byte offset of its padded C in the block and C's row pitch there (elements); -1: written in place */
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
  /** Byte ranges [from, to) of the engine's memory that posted products read in place. */
  private readsInPlace: number[] = [];

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
    const aIn = e.arena.owns(g.a),
      bIn = e.arena.owns(g.b);
    const cIn = writesCInPlace(e, g);
    const ldc = cIn ? g.ldc : align(g.n, nr);
    const need =
      (aIn ? 0 : align(aSpan * 4)) + (bIn ? 0 : align(bSpan * 4)) + (cIn ? 0 : align(align(g.m, mr) * ldc * 4));
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
    const inPlace = (arr: Float32Array, off: number, span: number): number => {
      const at = arr.byteOffset + off * 4;
      this.readsInPlace.push(at, at + span * 4);
      return at;
    };
    const a = aIn ? inPlace(g.a, g.aOffset, aSpan) : stage(g.a, g.aOffset, aSpan);
    const b = bIn ? inPlace(g.b, g.bOffset, bSpan) : stage(g.b, g.bOffset, bSpan);
    const cAt = cIn ? -1 : take(align(g.m, mr) * ldc * 4);
    const entry = TABLE + (BACKGROUND_TABLE + this.posted.length) * TASK_INTS;
    const c = cIn ? g.c.byteOffset + g.cOffset * 4 : base + cAt;
    writeOwnBTask(e.taskTable(), entry, g, 0, g.m, a, b, c, ldc);
    this.posted.push({ g, cAt, ldc });
    e.postBackground(threads);
    return true;
  }

  /** Whether a posted product reads any of `a`'s bytes in place (`a` lies in this engine's memory). */
  reads(a: ArrayBufferView): boolean {
    const from = a.byteOffset;
    const to = from + a.byteLength;
    const r = this.readsInPlace;
    for (let i = 0; i < r.length; i += 2) if (r[i]! < to && from < r[i + 1]!) return true;
    return false;
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
    this.readsInPlace = [];
    this.used = 0;
    this.e.finishBackground(posted.length);
    const heap = this.e.heap();
    for (const { g, cAt, ldc } of posted) if (cAt >= 0) copyProductOut(heap, (this.block.at + cAt) / 4, ldc, g);
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
