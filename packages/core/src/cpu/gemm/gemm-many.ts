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

/** Scratch bytes one job stages at most; a longer list runs as several jobs. */
const JOB_BYTES = 64 << 20;

/** Where one product's operands sit in the job's scratch (byte offsets from its base; -1: read in place). */
interface Placed {
  g: Gemm;
  aAt: number;
  bAt: number;
  cAt: number;
  /** C's padded row pitch in the scratch, elements */
  ldc: number;
}

/** Whether the engine's single call would route `g` elsewhere than its GEMM kernel (the GEMV, a batch). */
const runsAlone = (g: Gemm): boolean =>
  g.batch !== 1 || (isDense(g) && g.transB && !g.transA && g.m <= gemmConfig.gemvMaxM);

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
    const scratch = new ScratchLayout();
    const placed: Placed[] = [];
    // Up to MAX_TASKS products (one task each at least) and JOB_BYTES of scratch per job.
    for (let i = from; i < live.length && placed.length < MAX_TASKS; i++) {
      const p = place(e, live[i]!, scratch);
      if (placed.length > 0 && scratch.bytes > JOB_BYTES) break;
      placed.push(p);
    }
    runJob(e, placed, scratch.bytes, threads);
    from += placed.length;
  }
}

function place(e: WasmGemm, g: Gemm, scratch: ScratchLayout): Placed {
  const { mr, nr } = e.cfg;
  const [aSpan, bSpan] = storedSpans(g);
  const ldc = align(g.n, nr);
  return {
    g,
    aAt: e.arena.owns(g.a) ? -1 : scratch.take(aSpan * 4),
    bAt: e.arena.owns(g.b) ? -1 : scratch.take(bSpan * 4),
    cAt: scratch.take(align(g.m, mr) * ldc * 4),
    ldc,
  };
}

function runJob(e: WasmGemm, placed: readonly Placed[], bytes: number, threads: number): void {
  const base = e.stage(bytes, `sgemmMany: ${placed.length} products`);
  const heap = e.heap();
  const { mr } = e.cfg;
  // Byte address of an operand: in place, or its staged copy (the stored span, pitch kept).
  const operand = (arr: Float32Array, off: number, at: number, span: number): number => {
    if (at < 0) return arr.byteOffset + off * 4;
    heap.set(arr.subarray(off, off + span), (base + at) / 4);
    return base + at;
  };
  const work = placed.reduce((s, { g }) => s + g.m * g.n * g.k, 0);
  const jobThreads = work >= gemmConfig.threadMinWork ? threads : 1;
  // Row stripes per product: one when the products alone give every thread a few tasks.
  const target = Math.min(MAX_TASKS, jobThreads * gemmConfig.tasksPerThread);
  const per = jobThreads > 1 ? Math.max(1, Math.floor(target / placed.length)) : 1;
  const ctl = e.taskTable();
  let tasks = 0;
  for (const p of placed) {
    const { g } = p;
    const [aSpan, bSpan] = storedSpans(g);
    const a = operand(g.a, g.aOffset, p.aAt, aSpan);
    const b = operand(g.b, g.bOffset, p.bAt, bSpan);
    const [rsA, csA] = g.transA ? [4, g.lda * 4] : [g.lda * 4, 4];
    const [rsB, csB] = g.transB ? [4, g.ldb * 4] : [g.ldb * 4, 4];
    const rowTiles = Math.ceil(g.m / mr);
    const stripes = Math.min(per, rowTiles);
    for (let s = 0; s < stripes; s++) {
      const m0 = Math.floor((s * rowTiles) / stripes) * mr;
      const m1 = Math.min(g.m, Math.floor(((s + 1) * rowTiles) / stripes) * mr);
      const o = TABLE + tasks * TASK_INTS;
      ctl.fill(0, o, o + TASK_INTS);
      ctl.set([TASK_GEMM_OWN_B, m0, m1, 0, g.n, g.k, a, rsA, csA, b, rsB, csB, base + p.cAt, p.ldc * 4], o);
      tasks++;
    }
  }
  e.runTasks(tasks, jobThreads, 'sgemmMany');
  const out = e.heap();
  for (const { g, cAt, ldc } of placed) {
    const src = (base + cAt) / 4;
    if (ldc === g.n && g.ldc === g.n) g.c.set(out.subarray(src, src + g.m * g.n), g.cOffset);
    else for (let i = 0; i < g.m; i++) g.c.set(out.subarray(src + i * ldc, src + i * ldc + g.n), g.cOffset + i * g.ldc);
  }
}
