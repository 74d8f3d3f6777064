// Several independent products as one job of the engine's threads (e.g. an MoE layer's per-expert
// products): one staging pass, one hand-out to the workers and one wait for the whole list, where a
// call per product paid those each time and split each small product over the threads. Each product
// is one task (or a few row stripes of it, when there are fewer products than tasks to hand out)
// that packs its own B, so nothing waits on a shared packing step. Every output element is summed
// over k in the order a single call's kernel uses (the same depth blocks, the same micro-kernel), so
// results are bitwise those of one sgemm call per product.
import { align, ScratchLayout } from './arena.js';
import { type Gemm, isDense, storedSpans } from './args.js';
import { gemmConfig } from './config.js';
import type { WasmGemm } from './wasm-engine.js';
import { MAX_TASKS, TABLE, TASK_GEMM_OWN_B, TASK_INTS } from './worker-pool.js';

/** Where one product's operands sit in the job's scratch (byte offsets from its base; -1: in place). */
interface Placed {
  g: Gemm;
  aAt: number;
  bAt: number;
  cAt: number;
  /** C's row pitch where the kernel writes it, elements (padded in the scratch, g.ldc in place) */
  ldc: number;
}

/** Whether the engine's single call would route `g` elsewhere than its GEMM kernel (the GEMV, a batch). */
export const runsAlone = (g: Gemm): boolean =>
  g.batch !== 1 || (isDense(g) && g.transB && !g.transA && g.m <= gemmConfig.gemvMaxM);

/**
 * Writes task entry `o` of the table `ctl`: rows [m0, m1) of product g packing its own B
 * (TASK_GEMM_OWN_B), its operands and C at byte addresses a, b, c, C's row pitch ldc elements.
 */
export function writeOwnBTask(
  ctl: Int32Array,
  o: number,
  g: Gemm,
  m0: number,
  m1: number,
  a: number,
  b: number,
  c: number,
  ldc: number,
): void {
  const [rsA, csA] = g.transA ? [4, g.lda * 4] : [g.lda * 4, 4];
  const [rsB, csB] = g.transB ? [4, g.ldb * 4] : [g.ldb * 4, 4];
  ctl.fill(0, o, o + TASK_INTS);
  ctl.set([TASK_GEMM_OWN_B, m0, m1, 0, g.n, g.k, a, rsA, csA, b, rsB, csB, c, ldc * 4], o);
}

/** Copies product g's C from the heap (floats from `src`, row pitch ldc) into g.c at its offset and pitch. */
export function copyProductOut(heap: Float32Array, src: number, ldc: number, g: Gemm): void {
  if (ldc === g.n && g.ldc === g.n) g.c.set(heap.subarray(src, src + g.m * g.n), g.cOffset);
  else for (let i = 0; i < g.m; i++) g.c.set(heap.subarray(src + i * ldc, src + i * ldc + g.n), g.cOffset + i * g.ldc);
}

/** Runs validated products `gs` on engine `e` with up to `threads` threads. */
export function gemmMany(e: WasmGemm, gs: readonly Gemm[], threads: number): void {
  const live: Gemm[] = [];
  for (const g of gs) {
    if (g.m === 0 || g.n === 0) continue;
    // k = 0 (zero-filled C), batches and GEMV-sized rows: exactly what a single call does.
    if (g.k === 0 || runsAlone(g)) e.run(g, threads);
    else live.push(g);
  }
  let from = 0;
  while (from < live.length) {
    const scratch = new Staging();
    const placed: Placed[] = [];
    // Up to MAX_TASKS products (one task each at least) and manyJobBytes of scratch per job.
    for (let i = from; i < live.length && placed.length < MAX_TASKS; i++) {
      const [bytes, copies] = [scratch.bytes, scratch.copies.length];
      const p = place(e, live[i]!, scratch);
      if (placed.length > 0 && scratch.bytes > gemmConfig.manyJobBytes) {
        // Over budget: this product starts the next job.
        scratch.bytes = bytes;
        scratch.copies.length = copies;
        break;
      }
      placed.push(p);
    }
    runJob(e, placed, scratch, threads);
    from += placed.length;
  }
}

/** The job's scratch plan: operands staged once each (the two gradients of a product share g), then the Cs. */
class Staging extends ScratchLayout {
  readonly copies: { arr: Float32Array; off: number; span: number; at: number }[] = [];
  /** Scratch offset of `span` elements of `arr` from `off`, shared with an earlier identical operand. */
  operand(arr: Float32Array, off: number, span: number): number {
    const same = this.copies.find((c) => c.arr === arr && c.off === off && c.span === span);
    if (same) return same.at;
    const at = this.take(span * 4);
    this.copies.push({ arr, off, span, at });
    return at;
  }
}

/**
 * Whether the kernel may write g's C where it lives: in the engine's memory, its rows whole NR-column
 * tiles wide (a tile stores all NR columns, but only C's rows: a ragged m is fine) and overlapping
 * neither operand (which it may still have to read). Other products of a job never read it
 * (checkIndependent).
 */
export function writesCInPlace(e: WasmGemm, g: Gemm): boolean {
  if (g.n % e.cfg.nr !== 0 || !e.arena.owns(g.c)) return false;
  const [aSpan, bSpan, cSpan] = storedSpans(g);
  const c0 = g.c.byteOffset + g.cOffset * 4;
  const c1 = c0 + cSpan * 4;
  const apart = (arr: Float32Array, off: number, span: number) => {
    const at = arr.byteOffset + off * 4;
    return !e.arena.owns(arr) || at + span * 4 <= c0 || c1 <= at;
  };
  return apart(g.a, g.aOffset, aSpan) && apart(g.b, g.bOffset, bSpan);
}

function place(e: WasmGemm, g: Gemm, scratch: Staging): Placed {
  const { mr, nr } = e.cfg;
  const [aSpan, bSpan] = storedSpans(g);
  const cIn = writesCInPlace(e, g);
  const ldc = cIn ? g.ldc : align(g.n, nr);
  return {
    g,
    aAt: e.arena.owns(g.a) ? -1 : scratch.operand(g.a, g.aOffset, aSpan),
    bAt: e.arena.owns(g.b) ? -1 : scratch.operand(g.b, g.bOffset, bSpan),
    cAt: cIn ? -1 : scratch.take(align(g.m, mr) * ldc * 4),
    ldc,
  };
}

function runJob(e: WasmGemm, placed: readonly Placed[], scratch: Staging, threads: number): void {
  const base = e.stage(scratch.bytes, `sgemmMany: ${placed.length} products`);
  const heap = e.heap();
  const { mr } = e.cfg;
  for (const c of scratch.copies) heap.set(c.arr.subarray(c.off, c.off + c.span), (base + c.at) / 4);
  // Byte address of an operand: in place, or its staged copy (the stored span, pitch kept).
  const operand = (arr: Float32Array, off: number, at: number): number =>
    at < 0 ? arr.byteOffset + off * 4 : base + at;
  const work = placed.reduce((s, { g }) => s + g.m * g.n * g.k, 0);
  const jobThreads = work >= gemmConfig.threadMinWork ? threads : 1;
  // Row stripes per product: one when the products alone give every thread a few tasks.
  const target = Math.min(MAX_TASKS, jobThreads * gemmConfig.tasksPerThread);
  const per = jobThreads > 1 ? Math.max(1, Math.floor(target / placed.length)) : 1;
  const ctl = e.taskTable();
  /** The product each task computes a stripe of, and each product's stripes not yet finished. */
  const productOf: number[] = [];
  const pending: number[] = [];
  placed.forEach((p, j) => {
    const { g } = p;
    const a = operand(g.a, g.aOffset, p.aAt);
    const b = operand(g.b, g.bOffset, p.bAt);
    const rowTiles = Math.ceil(g.m / mr);
    const stripes = Math.min(per, rowTiles);
    for (let s = 0; s < stripes; s++) {
      const m0 = Math.floor((s * rowTiles) / stripes) * mr;
      const m1 = Math.min(g.m, Math.floor(((s + 1) * rowTiles) / stripes) * mr);
      writeOwnBTask(ctl, TABLE + productOf.length * TASK_INTS, g, m0, m1, a, b, operand(g.c, g.cOffset, p.cAt), p.ldc);
      productOf.push(j);
    }
    pending.push(stripes);
  });
  // A product's C is copied out as soon as its last stripe is done, while the other tasks still run.
  e.runTasks(
    productOf.length,
    jobThreads,
    'sgemmMany',
    (task) => {
      const j = productOf[task]!;
      if (--pending[j]! > 0) return;
      const { g, cAt, ldc } = placed[j]!;
      if (cAt >= 0) copyProductOut(e.heap(), (base + cAt) / 4, ldc, g);
    },
    work,
  );
}
