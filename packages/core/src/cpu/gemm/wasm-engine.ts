// Runs a validated GEMM on the SIMD128 kernel: copies operands into the wasm heap, splits the work
// into tasks, runs them (on worker threads too when available and worth it), copies C back.
//
// Heap layout: [control + task table | one packing workspace per thread | A | B | C].
// C is padded to whole MR x NR tiles so the micro-kernel never needs an edge case.
import type { Gemm } from './args.js';
import { gemmConfig } from './config.js';
import { buildSgemmModule, DEFAULT_KERNEL, workspaceBytes, type KernelConfig } from './sgemm-kernel.js';
import { CTRL_BYTES, MAX_TASKS, runTask, TABLE, TASK_INTS, WORKER_TASKS, WorkerPool, type KernelExports, type NodeBuiltins } from './worker-pool.js';

const PAGE = 65536;
const align = (x: number, a: number): number => Math.ceil(x / a) * a;

interface Span {
  base: number; // byte address of item 0
  step: number; // bytes between items
}

interface Task {
  m0: number; m1: number; n0: number; n1: number;
  a: number; b: number; c: number;
  count: number; // consecutive batch items
}

export class WasmGemm {
  private readonly cfg: KernelConfig = DEFAULT_KERNEL;
  private readonly wsBytes = align(workspaceBytes(DEFAULT_KERNEL), 64);
  private readonly memory: WebAssembly.Memory;
  private readonly ex: KernelExports;
  private readonly pool: WorkerPool | null;
  private readonly maxPages = gemmConfig.maxPages;
  private f32: Float32Array;
  private ctl: Int32Array;

  constructor(node: NodeBuiltins | null) {
    const shared = node !== null && typeof SharedArrayBuffer !== 'undefined';
    const module = new WebAssembly.Module(buildSgemmModule(this.cfg, shared, this.maxPages));
    const initial = Math.ceil((CTRL_BYTES + this.wsBytes) / PAGE);
    this.memory = new WebAssembly.Memory({ initial, maximum: this.maxPages, shared });
    this.ex = new WebAssembly.Instance(module, { env: { memory: this.memory } }).exports as unknown as KernelExports;
    this.pool = shared && node ? new WorkerPool(node.workerThreads, module, this.memory, (s) => this.wsOf(s)) : null;
    this.f32 = new Float32Array(this.memory.buffer);
    this.ctl = new Int32Array(this.memory.buffer, 0, CTRL_BYTES / 4);
  }

  /** Tasks executed on worker threads so far (diagnostics). */
  workerTasks(): number {
    return Atomics.load(this.ctl, WORKER_TASKS);
  }

  /** Threads this engine can actually use (1 without worker support). */
  canThread(): boolean {
    return this.pool !== null;
  }

  private wsOf(slot: number): number {
    return CTRL_BYTES + slot * this.wsBytes;
  }

  private ensureBytes(end: number): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    this.memory.grow(Math.ceil((end - have) / PAGE));
    this.f32 = new Float32Array(this.memory.buffer);
    this.ctl = new Int32Array(this.memory.buffer, 0, CTRL_BYTES / 4);
  }

  run(g: Gemm, threads: number): void {
    const { m, n, k, batch } = g;
    if (m === 0 || n === 0 || batch === 0) return;
    if (k === 0) {
      for (let t = 0; t < batch; t++) g.c.fill(0, g.cOffset + t * g.strideC, g.cOffset + t * g.strideC + m * n);
      return;
    }
    const threaded = this.pool !== null && threads > 1 && batch * m * n * k >= gemmConfig.threadMinWork;
    if (threaded) this.pool?.resize(threads - 1);
    const slots = (this.pool?.size ?? 0) + 1;
    const dataBase = this.wsOf(slots);
    const limit = this.maxPages * PAGE;

    // Batch items per chunk: as many as fit under the heap ceiling.
    let chunk = batch;
    while (chunk > 1 && dataBase + this.chunkBytes(g, chunk) > limit) chunk = Math.ceil(chunk / 2);
    const need = dataBase + this.chunkBytes(g, chunk);
    if (need > limit) {
      throw new RangeError(
        `sgemm: a ${m}x${k} @ ${k}x${n} product needs ${need} bytes of wasm heap, over the ${limit}-byte limit`,
      );
    }
    this.ensureBytes(need);
    for (let b0 = 0; b0 < batch; b0 += chunk) this.runChunk(g, b0, Math.min(chunk, batch - b0), dataBase, threaded ? threads : 1);
  }

  /** Bytes of A, B and padded C for `items` batch items. */
  private chunkBytes(g: Gemm, items: number): number {
    const a = align(this.spanElems(g.strideA, g.m * g.k, items) * 4, 64);
    const b = align(this.spanElems(g.strideB, g.k * g.n, items) * 4, 64);
    return a + b + items * this.cItemBytes(g);
  }

  /** Elements copied for `items` operands of `size` elements spaced `stride` apart. */
  private spanElems(stride: number, size: number, items: number): number {
    // Dense, overlapping or broadcast operands are copied as one span; gappy ones compactly.
    return stride <= size ? (items - 1) * stride + size : items * size;
  }

  private cItemBytes(g: Gemm): number {
    return align(g.m, this.cfg.mr) * align(g.n, this.cfg.nr) * 4;
  }

  /** Copies `items` operands starting at item b0 into the heap at `dst`. */
  private copyIn(src: Float32Array, off: number, stride: number, size: number, items: number, dst: number): Span {
    if (stride <= size) {
      const len = (items - 1) * stride + size;
      this.f32.set(src.subarray(off, off + len), dst / 4);
      return { base: dst, step: stride * 4 };
    }
    for (let t = 0; t < items; t++) {
      this.f32.set(src.subarray(off + t * stride, off + t * stride + size), dst / 4 + t * size);
    }
    return { base: dst, step: size * 4 };
  }

  private runChunk(g: Gemm, b0: number, items: number, dataBase: number, threads: number): void {
    const { m, n, k } = g;
    const nPad = align(n, this.cfg.nr);
    const A = this.copyIn(g.a, g.aOffset + b0 * g.strideA, g.strideA, m * k, items, dataBase);
    const bBase = dataBase + align(this.spanElems(g.strideA, m * k, items) * 4, 64);
    const B = this.copyIn(g.b, g.bOffset + b0 * g.strideB, g.strideB, k * n, items, bBase);
    const cBase = bBase + align(this.spanElems(g.strideB, k * n, items) * 4, 64);
    const cStep = this.cItemBytes(g);
    // Byte strides of element (row, col) of op(A) and op(B).
    const rsA = g.transA ? 4 : k * 4, csA = g.transA ? m * 4 : 4;
    const rsB = g.transB ? 4 : n * 4, csB = g.transB ? k * 4 : 4;
    const fixed = [k, rsA, csA, rsB, csB, nPad * 4] as const;

    const tasks = this.plan(m, n, items, threads, A, B, { base: cBase, step: cStep });
    if (threads > 1 && tasks.length > 1 && this.pool) {
      const ctl = this.ctl;
      tasks.forEach((t, i) => {
        ctl.set([t.m0, t.m1, t.n0, t.n1, fixed[0], t.a, fixed[1], fixed[2], t.b, fixed[3], fixed[4], t.c, fixed[5],
          t.count, A.step, B.step, cStep], TABLE + i * TASK_INTS);
      });
      const ex = this.ex;
      const ws = this.wsOf(0);
      this.pool.run(ctl, tasks.length, (i) => runTask(ex, ctl, i, ws));
    } else {
      const ws = this.wsOf(0);
      for (let t = 0; t < items; t++) {
        this.ex.gemm(0, m, 0, n, k, A.base + t * A.step, rsA, csA, B.base + t * B.step, rsB, csB, cBase + t * cStep, nPad * 4, ws);
      }
    }

    // Copy C out (rows are padded to nPad in the heap).
    for (let t = 0; t < items; t++) {
      const src = (cBase + t * cStep) / 4;
      const dst = g.cOffset + (b0 + t) * g.strideC;
      if (nPad === n) g.c.set(this.f32.subarray(src, src + m * n), dst);
      else for (let i = 0; i < m; i++) g.c.set(this.f32.subarray(src + i * nPad, src + i * nPad + n), dst + i * n);
    }
  }

  /**
   * Splits `items` GEMMs into about threads * tasksPerThread tasks: whole runs of batch items when
   * there are enough of them, otherwise tile-aligned row (or, for short wide C, column) stripes.
   */
  private plan(m: number, n: number, items: number, threads: number, A: Span, B: Span, C: Span): Task[] {
    // target <= MAX_TASKS / 2 keeps items * ceil(target / items) < MAX_TASKS below.
    const target = threads === 1 ? 1 : Math.min(MAX_TASKS / 2, threads * gemmConfig.tasksPerThread);
    const tasks: Task[] = [];
    if (items >= target) {
      for (let i = 0; i < target; i++) {
        const t0 = Math.floor((i * items) / target), t1 = Math.floor(((i + 1) * items) / target);
        tasks.push({ m0: 0, m1: m, n0: 0, n1: n, a: A.base + t0 * A.step, b: B.base + t0 * B.step, c: C.base + t0 * C.step, count: t1 - t0 });
      }
      return tasks;
    }
    const { mr, nr } = this.cfg;
    const per = Math.ceil(target / items);
    const rowTiles = Math.ceil(m / mr), colTiles = Math.ceil(n / nr);
    const byRows = rowTiles >= per || rowTiles >= colTiles;
    const pieces = Math.min(per, byRows ? rowTiles : colTiles);
    for (let t = 0; t < items; t++) {
      const a = A.base + t * A.step, b = B.base + t * B.step, c = C.base + t * C.step;
      for (let p = 0; p < pieces; p++) {
        if (byRows) {
          const r0 = Math.floor((p * rowTiles) / pieces) * mr, r1 = Math.min(m, Math.floor(((p + 1) * rowTiles) / pieces) * mr);
          tasks.push({ m0: r0, m1: r1, n0: 0, n1: n, a, b, c, count: 1 });
        } else {
          const c0 = Math.floor((p * colTiles) / pieces) * nr, c1 = Math.min(n, Math.floor(((p + 1) * colTiles) / pieces) * nr);
          tasks.push({ m0: 0, m1: m, n0: c0, n1: c1, a, b, c, count: 1 });
        }
      }
    }
    return tasks;
  }
}
