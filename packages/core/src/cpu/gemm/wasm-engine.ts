// Runs a validated GEMM on the SIMD128 kernel (on worker threads too when available and worth it).
// Operands that live in the engine's memory (resident weights, see arena.ts) are read in place;
// others are copied into a scratch block of the same memory, and C is copied back out.
//
// Memory: [control + task table | arena: per-thread packing workspaces, resident weights, scratch].
// Scratch layout: [A | B | packed B | C]; C is padded to whole MR x NR tiles so the micro-kernel never
// needs an edge case.
//
// Threaded job: tasks [0, P) pre-pack B by column ranges; tasks [P, n) are row (or column)
// stripes of C that share the packed B. Stripe tasks are gated on the packing tasks plus one
// completion the caller posts after copying A in, so workers pack B while the caller copies A;
// the caller copies each stripe of C out as soon as it is finished.
//
// Small M against a transposed B (a Linear weight) takes the GEMV kernel instead, threaded over N:
// each task is a range of weight rows, claimed from the shared counter.
import { type Gemm, isDense, type MaybePitched, storedSpans, withPitches } from './args.js';
import { Arena, align, HUGE_PAGE, PAGE, ScratchLayout } from './arena.js';
import { GEMV_ARGS, type GemvPlan, GemvPlans, GemvRecord, NO_GEMV } from './gemv-plans.js';
import { ByteRanges } from './byte-ranges.js';
import { latentAttentionTask } from './latent-attention-task.js';
import { trainingAttentionTask } from './training-attention-task.js';
import { ROW_KERNELS, type RowKernel, rowKernelTask } from './row-kernel-task.js';
import { buildAttentionRowsModule } from '../attention-rows-simd.js';
import { gemmConfig } from './config.js';
import { fp8GemvWorkspace, fp8StageExponent, stageX, WEIGHT_CODE, type WeightKind } from './gemv-kernel.js';
import { packI16XTask } from './i16-pack-x-task.js';
import { I16_WEIGHT_CODE, i16PackedXBytes, packI16XFields } from './i16-weight-gemm.js';
import { ELEMENT_BYTES } from './weight-gemm-kernel.js';
import {
  adviseHugePages,
  type BoundNativeKernels,
  memoryPhase,
  type NativeKernels,
  nativeKernels,
} from './native-kernels.js';
import { dequantizeFp8Weight, fp8ScalesFold, stageFp8Scales } from './fp8-weight.js';
import {
  buildSgemmModule,
  DEFAULT_KERNEL,
  enableRelaxedSimd,
  takesNativeKernels,
  workspaceBytes,
  type KernelConfig,
} from './sgemm-kernel.js';
import {
  BG_DONE,
  BG_ERROR,
  BG_ERROR_TEXT,
  BG_BUSY_US,
  BG_WORK,
  claimBackground,
  claimLoop,
  CTRL_BYTES,
  DONE,
  ERROR,
  ERROR_TEXT,
  JOB_BUSY_US,
  JOB_GATE_US,
  MAX_TASKS,
  runTask,
  taskErrorText,
  SLEEPERS,
  SPIN,
  TABLE,
  TASK_DONE,
  TIME_TASKS,
  TASK_GEMM,
  TASK_GEMV,
  TASK_INTS,
  TASK_PACK_B,
  TASK_ROW_KERNEL,
  TASK_WEIGHT_GEMM,
  WORKER_TASKS,
  WorkerPool,
  type KernelExports,
  type NodeBuiltins,
} from './worker-pool.js';

/**
 * A GEMV against a weight W [n, k] (row-major) of f32, bf16 bits or E4M3 bytes: y[m, n] = x[m, k] · Wᵀ.
 * FP8 weights come with their 128x128 block scales [ceil(n/128), ceil(k/128)]. x's and y's rows are
 * `ldx` / `ldy` elements apart (default k / n: dense), e.g. one head's rows of [m, H, k] activations.
 */
export interface Gemv {
  m: number;
  n: number;
  k: number;
  x: Float32Array;
  xOffset: number;
  ldx?: number;
  w: Float32Array | Uint16Array | Uint8Array;
  wOffset: number;
  kind: WeightKind;
  scales?: Float32Array;
  y: Float32Array;
  yOffset: number;
  ldy?: number;
}

/** Writes the rows of staged y [m, n] (row stride `ld` floats, at element `at` of `heap`) into v.y at its pitch. */
function copyRowsOut(v: Gemv, heap: Float32Array, at: number, ld: number): void {
  const ldy = v.ldy ?? v.n;
  if (ld === v.n && ldy === v.n) {
    v.y.set(heap.subarray(at, at + v.m * v.n), v.yOffset);
    return;
  }
  for (let i = 0; i < v.m; i++) v.y.set(heap.subarray(at + i * ld, at + i * ld + v.n), v.yOffset + i * ldy);
}

/** The scratch block a job may leave behind for the next (a decode step's staging); larger ones go back (endLargeStage). */
export const KEEP_SCRATCH_BYTES = 1 << 20;

/** Bytes from the first of m ≥ 1 f32 rows `ld` elements apart to the end of the last one's `width`. */
const rowsEnd = (m: number, ld: number, width: number): number => ((m - 1) * ld + width) * 4;

/** Whether a weight product is one the i16 route is for (i16-weight-gemm.ts): bf16 / FP8 weights, enough rows. */
function i16Shaped(v: Gemv): boolean {
  return v.kind !== 'f32' && v.m >= gemmConfig.i16MinRows;
}

/**
 * How many times finer than the other routes the i16 route cuts its products into column tasks: its
 * tasks share the job's quantized x, so a task costs no more than its columns; a finer tail, shorter
 * waits for the other thread's last task (docs/benchmarks.md, issue 13, twenty-first session).
 */
const I16_FINER = 4;

/** Whether a weight product takes the i16 route: one it is for, with i16 prefill activations in force. */
function takesI16(v: Gemv): boolean {
  return gemmConfig.prefillActivations === 'i16' && i16Shaped(v);
}

/**
 * Whether gemmConfig.roundPrefillActivations rounds this weight product's staged x: the products the i16
 * route would take while the activations are f32.
 */
function roundsActivations(v: Gemv): boolean {
  return gemmConfig.roundPrefillActivations !== null && gemmConfig.prefillActivations === 'f32' && i16Shaped(v);
}

/** Zeroes v.y's m rows (a product of depth 0). */
function zeroRows(v: Gemv): void {
  const ldy = v.ldy ?? v.n;
  for (let i = 0, at = v.yOffset; i < v.m; i++, at += ldy) v.y.fill(0, at, at + v.n);
}

/** How gemv_<kind> reads staged x: f32 as it is, bf16 de-interleaved per 8-block, FP8 also times 2^(120-e). */
const xLayout = (kind: WeightKind): number => (kind === 'f32' ? 0 : kind === 'bf16' ? 1 : 2);

/** Waits until ctl[i] !== v: a short spin, then Atomics.wait. */
function waitChange(ctl: Int32Array, i: number, v: number): void {
  for (let s = 0; s < SPIN; s++) if (Atomics.load(ctl, i) !== v) return;
  Atomics.wait(ctl, i, v);
}

/**
 * Calls `finished(i)` on this thread for tasks first … first + count − 1 of the table as each one's
 * done flag appears (any order), waiting on DONE only when none is new: a job copies finished results
 * out while the workers complete the rest.
 */
function reportFinished(ctl: Int32Array, first: number, count: number, finished: (i: number) => void): void {
  const seen = new Uint8Array(count);
  for (let left = count; left > 0; ) {
    const done = Atomics.load(ctl, DONE);
    for (let i = 0; i < count; i++) {
      if (seen[i] || Atomics.load(ctl, TABLE + (first + i) * TASK_INTS + TASK_DONE) === 0) continue;
      seen[i] = 1;
      left--;
      finished(i);
    }
    if (left > 0) waitChange(ctl, DONE, done);
  }
}

/** What a traced job met as it started (gemmConfig.jobTrace), and when the caller first saw a worker's claim. */
interface JobStart {
  t0: number;
  busy: boolean;
  posted: number;
  asleep: boolean;
  joined: number;
  /** ms the caller spent between claiming a task and starting it (the gates' waits) */
  gateMs: number;
}

/** Where a chunk of batch items lives in the heap (byte addresses / byte steps between items). */
interface Layout {
  a: number;
  aStep: number;
  aIn: boolean; // aIn/bIn: read in place (no copy)
  /** Stored elements of one item of A and B, with their row pitches (what a copy-in moves per item). */
  aSize: number;
  bSize: number;
  b: number;
  bStep: number;
  bIn: boolean;
  pb: number;
  pbStep: number; // pre-packed B (threaded path only)
  c: number;
  cStep: number;
  /** C is written in place (resident, apart from A and B): columns [0, nIn) of it; nothing to copy out there */
  cIn: boolean;
  ldc: number;
  /** Columns written in place: n, or (n not whole NR tiles) the whole tiles, the rest going through `tail` */
  nIn: number;
  /** Byte address of an m x NR scratch C for columns [nIn, n) (one batch item), copied out; -1: none */
  tail: number;
  end: number;
}

/** A C stripe task over `count` consecutive batch items starting at `item`. */
interface Stripe {
  item: number;
  count: number;
  m0: number;
  m1: number;
  n0: number;
  n1: number;
  /** writes into the layout's tail scratch (columns [nIn, n)) */
  tail?: boolean;
}

export class WasmGemm {
  private readonly wsBytes: number;
  private readonly memory: WebAssembly.Memory;
  private readonly ex: KernelExports;
  private readonly pool: WorkerPool | null;
  private readonly maxPages = gemmConfig.maxPages;
  /** Allocator over the memory past the control block. */
  readonly arena: Arena;
  /** Whether the GEMV kernels use relaxed-SIMD multiply-add. */
  readonly relaxed: boolean;
  /** The native kernels the wasm kernels call (native-kernels.ts), or null. */
  readonly native: NativeKernels | null;
  /** Those kernels bound to this memory (the caller's calls outside a job: head-screen.ts), or null. */
  readonly nativeBound: BoundNativeKernels | null;
  /** Whether Linux took the advice to back the memory with transparent huge pages (adviseHugePages). */
  readonly hugePages: boolean;
  /** Where the memory's offset 0 falls within a 2 MiB page of the address space (0 without the addon). */
  readonly hugePhase: number;
  private readonly ws: number[] = [];
  /** gemvMany's per-product records, reused job to job */
  private readonly gemvPlans = new GemvPlans();
  /** gemv's one-product list */
  private readonly oneGemv: Gemv[] = [NO_GEMV];
  /** run()'s small-m product as a GEMV, reused call to call */
  private readonly runGemv = new GemvRecord();
  private scratch = { at: 0, bytes: 0 };
  private f32: Float32Array;
  /** the memory as f64 and i32 words, re-made with f32 when it grows (jobs write f64 state and address words) */
  private f64: Float64Array;
  private i32: Int32Array;
  private ctl: Int32Array;

  constructor(
    node: NodeBuiltins | null,
    /** The kernel's tile and block sizes (jobs built outside this file pad C to its tiles). */
    readonly cfg: KernelConfig = DEFAULT_KERNEL,
    /**
     * The native kernels to call from the wasm ones (native-kernels.ts), or null for wasm alone; only a
     * shared memory (threaded engine, which never moves when it grows) and the 4 x 8 tile take them.
     */
    native: NativeKernels | null = nativeKernels(),
  ) {
    this.wsBytes = align(workspaceBytes(cfg), 64);
    const shared = node !== null && typeof SharedArrayBuffer !== 'undefined';
    this.native = shared && takesNativeKernels(cfg) ? native : null;
    this.relaxed = gemmConfig.relaxed === 'auto' ? enableRelaxedSimd() : gemmConfig.relaxed;
    const module = new WebAssembly.Module(
      buildSgemmModule(this.cfg, shared, this.maxPages, this.relaxed, this.native !== null),
    );
    this.memory = new WebAssembly.Memory({ initial: Math.ceil(CTRL_BYTES / PAGE), maximum: this.maxPages, shared });
    // The last page stays unallocated, so a kernel's end-of-weight address (base + bytes) never wraps.
    this.arena = new Arena(this.memory, CTRL_BYTES, (this.maxPages - 1) * PAGE);
    this.hugePages = adviseHugePages(this.memory, this.maxPages * PAGE);
    this.hugePhase = memoryPhase(this.memory, HUGE_PAGE);
    const imports = this.native ? this.native.addon.bind(new Uint8Array(this.memory.buffer)) : {};
    this.nativeBound = this.native ? (imports as BoundNativeKernels) : null;
    const kernels = new WebAssembly.Instance(module, { env: { memory: this.memory, ...imports } })
      .exports as unknown as KernelExports;
    const expModule = new WebAssembly.Module(buildAttentionRowsModule(shared, this.maxPages));
    const xp = new WebAssembly.Instance(expModule, { env: { memory: this.memory } }).exports as unknown as Parameters<
      typeof trainingAttentionTask
    >[1] &
      Parameters<typeof latentAttentionTask>[1];
    const rowKernels = ROW_KERNELS.map((name) => (xp as unknown as Record<RowKernel, (...a: number[]) => void>)[name]);
    this.ex = {
      ...kernels,
      latentAttention: (f, ws) => latentAttentionTask(kernels, xp, this.memory, f, ws),
      trainingAttention: (f, ws) => trainingAttentionTask(kernels, xp, this.memory, f, ws),
      rowKernel: (f) => rowKernelTask(rowKernels, f),
      packI16X: (f) => packI16XTask(kernels.packAI16, f),
      headScreenPack: this.nativeBound?.headScreenPack,
      headScreen: this.nativeBound?.headScreen,
    };
    this.pool =
      shared && node
        ? new WorkerPool(node.workerThreads, module, expModule, this.memory, (s) => this.wsOf(s), this.native?.file)
        : null;
    this.f32 = new Float32Array(this.memory.buffer);
    this.f64 = new Float64Array(this.memory.buffer);
    this.i32 = new Int32Array(this.memory.buffer);
    this.ctl = new Int32Array(this.memory.buffer, 0, CTRL_BYTES / 4);
    this.wsOf(0);
  }

  /**
   * Runs `kernel` of the attention rows module over `units` (rows, tokens, vectors) of operands in this
   * engine's memory, as one job of tasks split between the calling thread and the workers
   * (row-kernel-task.ts): up to two ranges per thread, each of at least `minUnits` (fewer units: one
   * task, on this thread); `argsOf(u0, u1)` gives the kernel's arguments for units [u0, u1).
   */
  runRowKernels(
    kernel: RowKernel,
    units: number,
    minUnits: number,
    threads: number,
    argsOf: (u0: number, u1: number) => readonly number[],
  ): void {
    const tasks = Math.max(1, Math.min(threads * 2, Math.floor(units / minUnits)));
    const list: (readonly number[])[] = [];
    for (let i = 0; i < tasks; i++)
      list.push(argsOf(Math.floor((i * units) / tasks), Math.floor(((i + 1) * units) / tasks)));
    this.runRowKernelList(kernel, list, threads);
  }

  /**
   * Runs `kernel` once per argument list of `list` (independent calls: they run at once, on this thread
   * and the workers), as one job of at most MAX_TASKS tasks.
   */
  runRowKernelList(kernel: RowKernel, list: readonly (readonly number[])[], threads: number): void {
    if (list.length > MAX_TASKS) throw new Error(`row kernel ${kernel}: at most ${MAX_TASKS} tasks`);
    if (list.length === 0) return;
    const id = ROW_KERNELS.indexOf(kernel);
    const table = this.taskTable();
    list.forEach((args, i) => {
      if (args.length > TASK_INTS - 4) throw new Error(`row kernel ${kernel}: at most ${TASK_INTS - 4} arguments`);
      const o = TABLE + i * TASK_INTS;
      table.fill(0, o, o + TASK_INTS);
      table.set([TASK_ROW_KERNEL, id, args.length, ...args], o);
    });
    this.runTasks(list.length, threads, `row kernel ${kernel}`);
  }

  /**
   * The threads a row-kernel job of `work` units should use: `threads` while the workers are awake (still
   * spinning after a job) or when the job reaches `wakeWork`, which pays for waking them; otherwise the
   * calling thread alone (as small GEMV jobs do: a woken worker costs a futex wake-up and, on a busy
   * machine, the caller's core).
   */
  rowJobThreads(threads: number, work: number, wakeWork: number): number {
    return threads > 1 && work < wakeWork && this.pool !== null && Atomics.load(this.ctl, SLEEPERS) > 0 ? 1 : threads;
  }

  /**
   * Bench diagnostics: with `on`, workers time every task they run, and this returns the ms they spent in
   * job tasks and in background tasks since the last call (counters reset); off stops the timing.
   */
  workerBusy(on: boolean): { jobMs: number; backgroundMs: number; jobGateMs: number } {
    const ctl = this.ctl;
    Atomics.store(ctl, TIME_TASKS, on ? 1 : 0);
    return {
      jobMs: Atomics.exchange(ctl, JOB_BUSY_US, 0) / 1000,
      backgroundMs: Atomics.exchange(ctl, BG_BUSY_US, 0) / 1000,
      jobGateMs: Atomics.exchange(ctl, JOB_GATE_US, 0) / 1000,
    };
  }

  /** Tasks executed on worker threads so far (diagnostics). */
  workerTasks(): number {
    return Atomics.load(this.ctl, WORKER_TASKS);
  }

  /** Whether this engine can use worker threads (false in browsers / without shared memory). */
  canThread(): boolean {
    return this.pool !== null;
  }

  /**
   * The packing workspaces of the threads a job of `threads` runs on (slot 0 = the calling thread): a task
   * told its thread's workspace can find per-thread space of its own by it (latent-attention.ts).
   */
  workspaces(threads: number): number[] {
    const n = this.pool !== null ? Math.max(1, threads) : 1;
    return Array.from({ length: n }, (_, slot) => this.wsOf(slot));
  }

  /** The packing workspace of thread slot `slot` (0 = the calling thread), allocated on first use. */
  private wsOf(slot: number): number {
    while (this.ws.length <= slot) {
      const at = this.arena.alloc(this.wsBytes);
      if (at === null) throw new RangeError('sgemm: no room in the wasm memory for a thread workspace');
      this.ws.push(at);
      if (this.f32) this.views();
    }
    return this.ws[slot]!;
  }

  /** Refreshes the views after the memory grew. */
  private views(): void {
    if (this.f32.buffer.byteLength === this.memory.buffer.byteLength) return;
    this.f32 = new Float32Array(this.arena.buffer());
    this.f64 = new Float64Array(this.f32.buffer);
    this.i32 = new Int32Array(this.f32.buffer);
    this.ctl = new Int32Array(this.f32.buffer, 0, CTRL_BYTES / 4);
  }

  /**
   * A scratch block of at least `bytes` bytes (kept between calls up to KEEP_SCRATCH_BYTES: see
   * endLargeStage), or null when it cannot fit. Not zeroed: a job writes what it stages before reading it.
   */
  private scratchOf(bytes: number): number | null {
    if (bytes <= this.scratch.bytes) return this.scratch.at;
    if (this.scratch.bytes) this.arena.release(this.scratch.at);
    this.scratch = { at: 0, bytes: 0 };
    // Round up so slowly growing problems do not reallocate every call.
    for (const size of [align(Math.min(bytes * 1.25, bytes + (64 << 20))), bytes]) {
      const at = this.arena.alloc(size, 0, false);
      if (at === null) continue;
      this.scratch = { at, bytes: size };
      this.views();
      return at;
    }
    return null;
  }

  run(product: MaybePitched, threads: number): void {
    const g = withPitches(product);
    const { m, n, k, batch } = g;
    if (m === 0 || n === 0 || batch === 0) return;
    if (k === 0) {
      for (let t = 0; t < batch; t++)
        for (let i = 0, at = g.cOffset + t * g.strideC; i < m; i++, at += g.ldc) g.c.fill(0, at, at + n);
      return;
    }
    if (isDense(g) && batch === 1 && g.transB && m <= gemmConfig.gemvMaxM && !g.transA) {
      const v = this.runGemv;
      v.m = m;
      v.n = n;
      v.k = k;
      v.x = g.a;
      v.xOffset = g.aOffset;
      v.ldx = k;
      v.w = g.b;
      v.wOffset = g.bOffset;
      v.kind = 'f32';
      v.y = g.c;
      v.yOffset = g.cOffset;
      v.ldy = n;
      try {
        this.gemv(v, threads);
      } finally {
        v.release();
      }
      return;
    }
    let threaded = this.pool !== null && threads > 1 && batch * m * n * k >= gemmConfig.threadMinWork;
    if (threaded) this.prepareWorkers(threads);
    // The threaded path also holds a packed copy of B; without room for it, run single-threaded.
    if (threaded && !this.fits(this.layout(g, 0, 1, 0, true).end)) threaded = false;

    // Batch items per chunk: as many as fit (and, threaded, few enough that one task per item fits
    // the task table).
    let chunk = threaded ? Math.min(batch, MAX_TASKS / 4) : batch;
    while (chunk > 1 && !this.fits(this.layout(g, 0, chunk, 0, threaded).end)) chunk = Math.ceil(chunk / 2);
    const need = this.layout(g, 0, chunk, 0, threaded).end;
    const base = this.fits(need) ? this.scratchOf(need) : null;
    if (base === null) {
      throw new RangeError(
        `sgemm: a ${m}x${k} @ ${k}x${n} product needs ${need} bytes of wasm memory, over the ${this.maxPages * PAGE}-byte limit (less what is resident)`,
      );
    }
    for (let b0 = 0; b0 < batch; b0 += chunk) {
      const items = Math.min(chunk, batch - b0);
      const L = this.layout(g, b0, items, base, threaded);
      if (threaded) this.runThreaded(g, b0, items, L, threads);
      else this.runSingle(g, b0, items, L);
    }
    this.endLargeStage();
  }

  /**
   * Ends a job's use of the scratch block: one over KEEP_SCRATCH_BYTES goes back to the arena. A
   * prefill's attention and weight products stage megabytes a layer; kept, that block would lie unused
   * beside the next op's blocks (the MoE's work arrays), and the memory's peak would hold both.
   */
  endLargeStage(): void {
    if (this.scratch.bytes <= KEEP_SCRATCH_BYTES) return;
    this.arena.release(this.scratch.at);
    this.scratch = { at: 0, bytes: 0 };
  }

  /** Whether a scratch block of `bytes` can be had (the current one reused, or a new one allocated). */
  private fits(bytes: number): boolean {
    if (bytes <= this.scratch.bytes) return true;
    if (bytes > this.maxPages * PAGE) return false;
    const at = this.scratchOf(bytes);
    return at !== null;
  }

  /** y = x · Wᵀ for small m, W [n, k] row-major (f32, bf16 bits or E4M3 bytes), threaded over n. */
  gemv(v: Gemv, threads: number): void {
    this.oneGemv[0] = v;
    try {
      this.gemvMany(this.oneGemv, threads);
    } finally {
      this.oneGemv[0] = NO_GEMV;
    }
  }

  /**
   * Several small-m products in one job (e.g. the gate and up projections of every expert a token
   * was routed to): one staging pass, one task table threaded over all of them, so a decode step pays
   * the per-call costs (staging, waking the workers, waiting for them) once instead of per weight.
   * Resident weights and FP8 scales are read in place, a y in this memory is written in place (unless
   * it overlaps something the job reads in place); an x shared by several products is staged once.
   * The plans are the engine's, reused job to job (gemv-plans.ts): a job allocates nothing.
   */
  gemvMany(list: readonly Gemv[], threads: number): void {
    const most = MAX_TASKS / 4; // each product needs a task of its own
    if (list.length > most) {
      for (let i = 0; i < list.length; i += most) this.gemvMany(list.slice(i, i + most), threads);
      return;
    }
    const plans = this.gemvPlans;
    let count = 0;
    let bytes = 0; // the job's scratch, laid out as [staged x | weights not resident | y | scales], 64-byte aligned
    for (const v of list) {
      const { m, n, k } = v;
      if (m === 0 || n === 0) continue;
      if (k === 0) {
        zeroRows(v);
        continue;
      }
      const eb = v.kind === 'f32' ? 4 : v.kind === 'bf16' ? 2 : 1;
      const sCols = Math.ceil(k / 128),
        sCount = v.kind === 'fp8' ? Math.ceil(n / 128) * sCols : 0;
      if (v.kind === 'fp8' && !(v.scales && v.scales.length >= sCount))
        throw new RangeError(`gemv: FP8 weights [${n}, ${k}] need ${sCount} block scales`);
      if (v.kind === 'fp8' && fp8GemvWorkspace(m, k) > this.wsBytes)
        throw new RangeError(
          `gemv: FP8 weights with ${m} x ${k} activations need ${fp8GemvWorkspace(m, k)} bytes of thread workspace, over its ${this.wsBytes}`,
        );
      const p = plans.at(count++);
      p.v = v;
      p.eb = eb;
      p.sCols = sCols;
      // bf16 and FP8 read x de-interleaved per 8-block (FP8 also scaled by 2^(120-e)); f32 as it is.
      // e depends on x's values only, so products sharing a staged x share its e (computed once).
      let shared: GemvPlan | null = null;
      for (let j = 0; j < count - 1 && !shared; j++) {
        const q = plans.at(j);
        if (
          q.stagesX &&
          q.v.x === v.x &&
          q.v.xOffset === v.xOffset &&
          q.v.m === m &&
          q.v.k === k &&
          (q.v.ldx ?? k) === (v.ldx ?? k) &&
          xLayout(q.v.kind) === xLayout(v.kind)
        )
          shared = q;
      }
      p.stagesX = shared === null;
      if (shared) {
        p.e = shared.e;
        p.xAt = shared.xAt;
      } else {
        p.e = v.kind === 'fp8' ? fp8StageExponent(v.x, v.xOffset, m, k, v.ldx) : 120;
        p.xAt = bytes;
        bytes += align(m * k * 4);
      }
      p.wAt = -1;
      if (!this.arena.owns(v.w)) {
        p.wAt = bytes;
        bytes += align(n * k * eb);
      }
      p.yAt = -1; // decided below, once every product's in-place reads are known
      p.sAt = -1;
      if (sCount && !(this.arena.owns(v.scales!) && v.scales!.length === sCount)) {
        p.sAt = bytes;
        bytes += align(sCount * 4);
      }
    }
    if (count === 0) return;
    for (let i = 0; i < count; i++) {
      const p = plans.at(i);
      if (!this.yWritableInPlace(p.v, count)) {
        p.yAt = bytes;
        bytes += align(p.v.m * p.v.n * 4);
      }
    }
    const base = this.stage(bytes, `gemv: ${count} small products`);
    let work = 0,
      fp8Work = 0;
    for (let i = 0; i < count; i++) {
      const p = plans.at(i);
      const { v, eb } = p;
      const { m, n, k } = v;
      if (p.stagesX) stageX(v.kind, v.x, v.xOffset, m, k, this.f32, (base + p.xAt) / 4, k, p.e, v.ldx);
      let wAt = v.w.byteOffset + v.wOffset * eb;
      if (p.wAt >= 0) {
        wAt = base + p.wAt;
        const heap =
          v.kind === 'f32'
            ? this.f32
            : v.kind === 'bf16'
              ? new Uint16Array(this.f32.buffer)
              : new Uint8Array(this.f32.buffer);
        heap.set(v.w.subarray(v.wOffset, v.wOffset + n * k), wAt / eb);
      }
      let sAt = 0;
      if (v.kind === 'fp8') {
        const sCount = Math.ceil(n / 128) * p.sCols;
        if (p.sAt < 0) sAt = v.scales!.byteOffset;
        else {
          sAt = base + p.sAt;
          this.f32.set(v.scales!.length === sCount ? v.scales! : v.scales!.subarray(0, sCount), sAt / 4);
        }
      }
      const inPlace = p.yAt < 0;
      const a = p.args;
      a[0] = WEIGHT_CODE[v.kind];
      a[1] = base + p.xAt;
      a[2] = m;
      a[3] = k * 4;
      a[4] = k;
      a[5] = wAt;
      a[6] = k * eb;
      a[7] = 0;
      a[8] = n;
      a[9] = inPlace ? v.y.byteOffset + v.yOffset * 4 : base + p.yAt;
      a[10] = (inPlace ? (v.ldy ?? n) : n) * 4;
      a[11] = sAt;
      a[12] = p.sCols * 4;
      a[13] = p.e;
      work += m * n * k;
      if (v.kind === 'fp8') fp8Work += m * n * k;
    }
    const useThreads =
      this.pool !== null &&
      threads > 1 &&
      work >= gemmConfig.threadMinWork &&
      (work >= gemmConfig.wakeMinWork ||
        (fp8Work > 0 && fp8Work >= gemmConfig.wakeMinWorkFp8) ||
        Atomics.load(this.ctl, SLEEPERS) === 0);
    try {
      if (!useThreads) {
        const ws = this.wsOf(0);
        for (let i = 0; i < count; i++) {
          const a = plans.at(i).args;
          const kernel = a[0] === 0 ? this.ex.gemv_f32 : a[0] === 1 ? this.ex.gemv_bf16 : this.ex.gemv_fp8;
          kernel(a[1]!, a[2]!, a[3]!, a[4]!, a[5]!, a[6]!, a[7]!, a[8]!, a[9]!, a[10]!, a[11]!, a[12]!, a[13]!, ws);
        }
      } else this.gemvThreaded(count, threads);
      for (let i = 0; i < count; i++) {
        const p = plans.at(i);
        if (p.yAt >= 0) copyRowsOut(p.v, this.f32, (base + p.yAt) / 4, p.v.n);
      }
    } finally {
      plans.release(count);
    }
  }

  /**
   * Whether v's y (in this memory) can take the kernel's writes directly: the kernel writes exactly the
   * m rows' n elements at y's pitch, so only an overlap with a weight or scales that the job's first
   * `count` plans read in place rules it out (x is always staged).
   */
  private yWritableInPlace(v: Gemv, count: number): boolean {
    if (!this.arena.owns(v.y)) return false;
    const y0 = v.y.byteOffset + v.yOffset * 4;
    const y1 = y0 + rowsEnd(v.m, v.ldy ?? v.n, v.n);
    for (let j = 0; j < count; j++) {
      const q = this.gemvPlans.at(j);
      if (q.wAt < 0) {
        const w0 = q.v.w.byteOffset + q.v.wOffset * q.eb;
        if (w0 < y1 && y0 < w0 + q.v.n * q.v.k * q.eb) return false;
      }
      if (q.sAt < 0 && q.v.kind === 'fp8') {
        const s0 = q.v.scales!.byteOffset;
        if (s0 < y1 && y0 < s0 + q.v.scales!.byteLength) return false;
      }
    }
    return true;
  }

  /**
   * Runs the first `count` GEMV plans' kernels over the workers: each product cut into ranges of 4-row
   * blocks, a few per thread overall (in proportion to each product's weight bytes) so early finishers
   * take more.
   */
  private gemvThreaded(count: number, threads: number): void {
    (this.pool as WorkerPool).resize(this.ctl, threads - 1);
    const plans = this.gemvPlans;
    let total = 0;
    for (let j = 0; j < count; j++) {
      const { v, eb } = plans.at(j);
      total += v.n * v.k * eb;
    }
    const budget = Math.max(count, Math.min(MAX_TASKS, threads * gemmConfig.tasksPerThread));
    const ctl = this.ctl;
    let tasks = 0;
    for (let j = 0; j < count; j++) {
      const { v, eb, args: a } = plans.at(j);
      const blocks = Math.ceil(v.n / 4);
      const left = MAX_TASKS - tasks - (count - j - 1); // keep one slot for each later product
      const parts = Math.max(1, Math.min(blocks, left, Math.round((budget * v.n * v.k * eb) / total)));
      for (let i = 0; i < parts; i++) {
        const o = TABLE + tasks * TASK_INTS;
        ctl.fill(0, o, o + TASK_INTS);
        a[7] = Math.floor((i * blocks) / parts) * 4;
        a[8] = Math.min(v.n, Math.floor(((i + 1) * blocks) / parts) * 4);
        ctl[o] = TASK_GEMV;
        for (let q = 0; q < GEMV_ARGS; q++) ctl[o + 1 + q] = a[q]!;
        tasks++;
      }
    }
    this.runTaskTable(tasks, 'gemv');
  }

  /**
   * y = x · Wᵀ for products of many rows against f32 / bf16 / FP8 weights, all in one job (e.g. every
   * expert's gate and up projection of a prefill): each product's columns are cut into NR-aligned
   * ranges, a task each, that pack (bf16 / FP8: widen) their own B~ blocks from the stored weight
   * (weight-gemm-kernel.ts), so nothing widens a whole weight and the job pays one hand-out to the
   * workers and one wait. An x shared by several products is staged once.
   */
  weightGemmMany(list: readonly Gemv[], threads: number): void {
    const most = MAX_TASKS / 4; // each product needs a task of its own
    if (list.length > most) {
      for (let i = 0; i < list.length; i += most) this.weightGemmMany(list.slice(i, i + most), threads);
      return;
    }
    const live: Gemv[] = [];
    for (const v of list) {
      const { m, n, k } = v;
      const sCount = v.kind === 'fp8' ? Math.ceil(n / 128) * Math.ceil(k / 128) : 0;
      if (v.kind === 'fp8' && !(v.scales && v.scales.length >= sCount))
        throw new RangeError(`weight product: FP8 weights [${n}, ${k}] need ${sCount} block scales`);
      if (m === 0 || n === 0) continue;
      if (k === 0) zeroRows(v);
      else if (v.kind !== 'fp8' || fp8ScalesFold(v.scales!, sCount)) live.push(v);
      else {
        // A scale of 2^8 or more cannot be staged times 2^120: that product runs on its f32 values
        // (the same ones the packing computes, so the same bits).
        const w = dequantizeFp8Weight(v.w.subarray(v.wOffset, v.wOffset + n * k) as Uint8Array, v.scales!, n, k);
        live.push({ ...v, kind: 'f32', w, wOffset: 0 });
      }
    }
    if (live.length === 0) return;
    const work = live.reduce((t, v) => t + v.m * v.n * v.k, 0);
    const threaded = this.pool !== null && threads > 1 && work >= gemmConfig.threadMinWork;
    if (threaded) this.prepareWorkers(threads);
    // Scratch plan: staged x (shared by products reading the same rows), weights that are not
    // resident, FP8 scales, and each C padded to whole MR x NR tiles. Operands already in this memory
    // are used where they lie: x read in place, and C written straight into y when y's rows are whole
    // NR tiles (the macro-kernel writes only C's m rows and n columns) and y overlaps nothing the job
    // reads in place — no staging copy in, no copy out.
    const { mr, nr } = this.cfg;
    interface Plan {
      v: Gemv;
      xAt: number;
      /** i16 route: its quantized x (A~), shared by the products reading the same rows; else -1 */
      qAt: number;
      wAt: number;
      sAt: number;
      cAt: number;
      nPad: number;
    }
    const addr = (a: ArrayBufferView, offset: number, bytes: number): number =>
      this.arena.owns(a) ? a.byteOffset + offset * bytes : -1;
    const reads: [number, number][] = [];
    for (const v of live) {
      const x = addr(v.x, v.xOffset, 4);
      if (x >= 0) reads.push([x, x + rowsEnd(v.m, v.ldx ?? v.k, v.k)]);
      const eb = ELEMENT_BYTES[v.kind];
      const w = addr(v.w, v.wOffset, eb);
      if (w >= 0) reads.push([w, w + v.n * v.k * eb]);
    }
    const readRanges = new ByteRanges(reads);
    const yInPlace = (v: Gemv): boolean => {
      const y = addr(v.y, v.yOffset, 4);
      return y >= 0 && v.n % nr === 0 && !readRanges.overlaps(y, y + rowsEnd(v.m, v.ldy ?? v.n, v.n));
    };
    const scratch = new ScratchLayout();
    const { take } = scratch;
    const staged: { v: Gemv; at: number }[] = [];
    const quantized: { v: Gemv; at: number; xAt: number }[] = [];
    const sameX = (a: Gemv, b: Gemv): boolean =>
      a.x === b.x && a.xOffset === b.xOffset && a.m === b.m && a.k === b.k && a.ldx === b.ldx;
    // Arrays built by loops, not map(): map()'s result changes elements kind once inlined, which
    // deoptimized this job's readers in a request (eighteenth session, dec19's trace).
    const plans: Plan[] = [];
    for (const v of live) {
      const { m, n, k } = v;
      const sCount = v.kind === 'fp8' ? Math.ceil(n / 128) * Math.ceil(k / 128) : 0;
      const rounded = roundsActivations(v);
      let xs = staged.find((q) => sameX(q.v, v) && roundsActivations(q.v) === rounded);
      if (!xs && (!this.arena.owns(v.x) || rounded)) {
        xs = { v, at: take(m * k * 4) };
        staged.push(xs);
      }
      const xAt = xs ? xs.at : -1;
      let qAt = -1;
      if (takesI16(v)) {
        let q = quantized.find((e) => sameX(e.v, v));
        if (!q) {
          q = { v, at: take(i16PackedXBytes(this.cfg, m, k)), xAt };
          quantized.push(q);
        }
        qAt = q.at;
      }
      const wAt = this.arena.owns(v.w) ? -1 : take(n * k * ELEMENT_BYTES[v.kind]);
      const nPad = align(n, nr);
      const cAt = yInPlace(v) ? -1 : take(align(m, mr) * nPad * 4);
      plans.push({ v, xAt, qAt, wAt, sAt: take(sCount * 4), cAt, nPad });
    }
    const base = this.stage(scratch.bytes, `weight product: ${live.length} products`);
    // staged x is dense (row stride k)
    for (const { v, at } of staged) {
      stageX('f32', v.x, v.xOffset, v.m, v.k, this.f32, (base + at) / 4, v.k, 120, v.ldx);
      if (roundsActivations(v))
        gemmConfig.roundPrefillActivations!(this.f32.subarray((base + at) / 4, (base + at) / 4 + v.m * v.k), v.m, v.k);
    }
    const args: number[][] = [];
    for (const p of plans) {
      const { v } = p;
      const { m, n, k } = v;
      const eb = ELEMENT_BYTES[v.kind];
      let w = v.w.byteOffset + v.wOffset * eb;
      if (p.wAt >= 0) {
        w = base + p.wAt;
        const heap =
          eb === 4 ? this.f32 : eb === 2 ? new Uint16Array(this.f32.buffer) : new Uint8Array(this.f32.buffer);
        heap.set(v.w.subarray(v.wOffset, v.wOffset + n * k), w / eb);
      }
      const sCols = Math.ceil(k / 128);
      if (v.kind === 'fp8') stageFp8Scales(v.scales!, Math.ceil(n / 128) * sCols, this.f32, (base + p.sAt) / 4);
      // weightCode m n0 n1 k a rsA w ldw c ldc s lds (the task-table fields of TASK_WEIGHT_GEMM; the i16
      // route's a is x's A~, rsA unused)
      const i16 = p.qAt >= 0;
      args.push([
        i16 ? I16_WEIGHT_CODE[v.kind as 'bf16' | 'fp8'] : WEIGHT_CODE[v.kind],
        m,
        0,
        n,
        k,
        i16 ? base + p.qAt : p.xAt >= 0 ? base + p.xAt : v.x.byteOffset + v.xOffset * 4,
        i16 ? 0 : (p.xAt >= 0 ? k : (v.ldx ?? k)) * 4,
        w,
        k * eb,
        p.cAt >= 0 ? base + p.cAt : v.y.byteOffset + v.yOffset * 4,
        (p.cAt >= 0 ? p.nPad : (v.ldy ?? n)) * 4,
        base + p.sAt,
        sCols * 4,
      ]);
    }
    const jobThreads = threaded ? threads : 1;
    // The i16 route's x quantized once each by the job's first tasks, in row ranges over the threads
    // (not on this thread before the hand-out, while the workers wait); the products' column tasks are
    // gated on them and read the one A~.
    const packs = this.packI16XTasks(quantized, base, jobThreads);
    const tasks = this.weightGemmTasks(plans, args, jobThreads, work, packs);
    this.runTasks(tasks, jobThreads, 'weight product', undefined, 0, packs);
    for (const p of plans) if (p.cAt >= 0) copyRowsOut(p.v, this.f32, (base + p.cAt) / 4, p.nPad); // else written in place
    this.endLargeStage();
  }

  /**
   * Writes the tasks quantizing weightGemmMany's i16 x's (each at `at` in the job's scratch from `base`)
   * at the head of the task table and returns their count: on several threads each x's rows in whole-MR
   * ranges, a few tasks a thread in proportion to each x's size (at least one an x); on one, one an x.
   */
  private packI16XTasks(quantized: { v: Gemv; at: number; xAt: number }[], base: number, threads: number): number {
    const { mr } = this.cfg;
    const size = quantized.reduce((t, { v }) => t + v.m * v.k, 0);
    const ctl = this.ctl;
    let tasks = 0;
    for (const { v, at, xAt } of quantized) {
      const x = xAt >= 0 ? base + xAt : v.x.byteOffset + v.xOffset * 4;
      const rsX = (xAt >= 0 ? v.k : (v.ldx ?? v.k)) * 4;
      const panels = Math.ceil(v.m / mr);
      const share = Math.round((threads * gemmConfig.tasksPerThread * v.m * v.k) / size);
      const parts = threads > 1 ? Math.max(1, Math.min(panels, share)) : 1;
      for (let i = 0; i < parts; i++) {
        const r0 = Math.floor((i * panels) / parts) * mr;
        const r1 = Math.min(v.m, Math.floor(((i + 1) * panels) / parts) * mr);
        const o = TABLE + tasks * TASK_INTS;
        ctl.fill(0, o, o + TASK_INTS);
        ctl.set(packI16XFields(this.cfg, x, rsX, v.m, v.k, base + at, r0, r1), o);
        tasks++;
      }
    }
    return tasks;
  }

  /**
   * Writes weightGemmMany's products into the task table as column-range tasks from entry `first` on and
   * returns the table's count: on several threads a few per thread (the i16 route's more), in proportion
   * to each product's work, the largest first — threads claim in table order, so the job ends on its
   * smallest tasks and a thread that finishes first waits less for the other's last; on one, one per
   * product. Each column's sums are the same however the columns are cut or ordered.
   */
  private weightGemmTasks(
    plans: { v: Gemv; qAt: number }[],
    args: number[][],
    threads: number,
    work: number,
    first: number,
  ): number {
    const { nr } = this.cfg;
    const perJob = threads * gemmConfig.tasksPerThread;
    const budget = Math.max(plans.length, Math.min(MAX_TASKS - first, perJob));
    const i16Budget = Math.max(plans.length, Math.min(MAX_TASKS - first, I16_FINER * perJob));
    const cuts: { j: number; n0: number; n1: number; work: number }[] = [];
    let left = MAX_TASKS - first;
    plans.forEach(({ v, qAt }, j) => {
      const tiles = Math.ceil(v.n / nr);
      const room = left - (plans.length - j - 1); // keep one slot for each later product
      // The f32 / bf16 / FP8 routes' tasks pack A~ for all of their product's rows: at least ~32 panels
      // per thread's task before a product is cut into more tasks than threads. The i16 route's tasks
      // read x's one A~, so they are cut I16_FINER times finer, down to one NR tile.
      const i16 = qAt >= 0;
      const share = Math.round(((i16 ? i16Budget : budget) * v.m * v.n * v.k) / work);
      const most = i16 ? tiles : Math.max(threads, Math.floor(tiles / (32 * threads)) * threads);
      const parts = threads > 1 ? Math.max(1, Math.min(tiles, room, share, most)) : 1;
      for (let i = 0; i < parts; i++) {
        const n0 = Math.floor((i * tiles) / parts) * nr;
        const n1 = Math.min(v.n, Math.floor(((i + 1) * tiles) / parts) * nr);
        cuts.push({ j, n0, n1, work: v.m * (n1 - n0) * v.k });
      }
      left -= parts;
    });
    if (threads > 1) cuts.sort((a, b) => b.work - a.work); // stable: equal tasks keep product order
    const ctl = this.ctl;
    let tasks = first;
    for (const { j, n0, n1 } of cuts) {
      const a = args[j]!;
      const o = TABLE + tasks * TASK_INTS;
      ctl.fill(0, o, o + TASK_INTS);
      a[2] = n0;
      a[3] = n1;
      ctl.set([TASK_WEIGHT_GEMM, ...a], o);
      tasks++;
    }
    return tasks;
  }

  /** A scratch block of `bytes` for a job's operands (its byte address; `what` names them in the error). */
  stage(bytes: number, what: string): number {
    const at = this.tryStage(bytes);
    if (at === null) throw new RangeError(`${what} need ${bytes} bytes of wasm memory, more than is free`);
    return at;
  }

  /** The scratch block as stage() gives it, or null when it cannot be had (the caller has a fallback). */
  tryStage(bytes: number): number | null {
    const at = this.scratchOf(bytes);
    if (at !== null) this.views();
    return at;
  }

  /** The memory as f32 (a fresh view after the memory grew). */
  heap(): Float32Array {
    this.views();
    return this.f32;
  }

  /** The memory as f64 (re-made with heap() after the memory grew). */
  heapF64(): Float64Array {
    this.views();
    return this.f64;
  }

  /** The memory as i32 words (re-made with heap() after the memory grew). */
  heapI32(): Int32Array {
    this.views();
    return this.i32;
  }

  /** The memory's current size in 64 KiB pages (what a native kernel called from outside wasm checks against). */
  memoryPages(): number {
    return this.memory.buffer.byteLength / PAGE;
  }

  /** The control words; a job writes its tasks at TABLE (see worker-pool.ts). */
  taskTable(): Int32Array {
    this.views();
    return this.ctl;
  }

  /**
   * Runs the first `tasks` entries of the task table: on the workers too when threads > 1 and there are
   * several. `finished(i)`, when given, is called on this thread once task i is done, while other tasks
   * may still run (a job copies a finished product's C out during the others' tail). With `gated` > 0,
   * the tasks from `gated` on start once the first `gated` are done (claims go in index order, so one
   * thread running them in order needs nothing more).
   */
  runTasks(tasks: number, threads: number, what: string, finished?: (task: number) => void, work = 0, gated = 0): void {
    if (this.pool !== null && threads > 1 && tasks > 1) {
      this.prepareWorkers(threads);
      this.runTaskTable(tasks, what, finished, work, gated);
      return;
    }
    const ws = this.wsOf(0);
    for (let i = 0; i < tasks; i++) {
      runTask(this.ex, this.ctl, i, ws);
      finished?.(i);
    }
  }

  /**
   * Hands the background task whose entry was just written (see worker-pool.ts: BACKGROUND_TABLE) to
   * the workers; false when this engine has none to run it (then nothing was posted).
   */
  postBackground(threads: number): boolean {
    if (this.pool === null || threads <= 1) return false;
    this.prepareWorkers(threads);
    this.pool.postBackground(this.ctl);
    return true;
  }

  /**
   * Runs the `posted` background tasks no worker has claimed on this thread, waits for the rest and
   * empties the queue (throws when one failed).
   */
  finishBackground(posted: number): void {
    const ctl = this.ctl,
      ex = this.ex,
      ws = this.wsOf(0);
    const trace = gemmConfig.jobTrace !== null ? this.traceStart() : null;
    let mine = 0;
    while (
      claimBackground(ctl, (i) => {
        mine++;
        runTask(ex, ctl, i, ws);
      })
    );
    const t1 = trace ? performance.now() : 0;
    for (let d = Atomics.load(ctl, BG_DONE); d < posted; d = Atomics.load(ctl, BG_DONE)) waitChange(ctl, BG_DONE, d);
    if (trace) this.traceEnd(trace, 'background finish', posted, mine, t1, 0);
    const failed = Atomics.load(ctl, BG_ERROR) !== 0;
    Atomics.store(ctl, BG_WORK, 0);
    Atomics.store(ctl, BG_DONE, 0);
    Atomics.store(ctl, BG_ERROR, 0);
    if (failed) throw new Error(`sgemm: a background product failed: ${taskErrorText(ctl, BG_ERROR_TEXT)}`);
  }

  /** Sizes the worker pool for `threads` threads and gives each its workspace (before a job stages). */
  private prepareWorkers(threads: number): void {
    this.pool?.resize(this.ctl, threads - 1);
    for (let s = 1; s < threads; s++) this.wsOf(s);
  }

  /**
   * Hands the first `tasks` entries of the task table to the workers, claims tasks on this thread too,
   * and returns once all are done (an error names `what`); see runTasks for `finished`.
   */
  private runTaskTable(tasks: number, what: string, finished?: (task: number) => void, work = 0, gated = 0): void {
    const ctl = this.ctl;
    const trace = gemmConfig.jobTrace !== null ? this.traceStart() : null;
    (this.pool as WorkerPool).start(ctl, tasks, gated > 0 ? gated : tasks, gated, gemmConfig.spinMicros);
    const mine = this.claimOnCaller(tasks, trace);
    const t1 = trace ? performance.now() : 0;
    if (finished) reportFinished(ctl, 0, tasks, finished);
    for (let d = Atomics.load(ctl, DONE); d < tasks; d = Atomics.load(ctl, DONE)) waitChange(ctl, DONE, d);
    if (trace) this.traceEnd(trace, what, tasks, mine, t1, work);
    if (Atomics.load(ctl, ERROR) !== 0) throw new Error(`${what}: a task failed: ${taskErrorText(ctl, ERROR_TEXT)}`);
  }

  /**
   * Claims and runs the job's tasks on this thread until none is left; returns how many it ran. With a
   * trace, notes when the caller first found a task claimed by a worker (an index past its own count),
   * or, if workers ran some it never saw claimed, when it ran out of tasks: the job's join time.
   */
  private claimOnCaller(total: number, trace: JobStart | null): number {
    const ctl = this.ctl,
      ex = this.ex,
      ws = this.wsOf(0);
    let mine = 0,
      joined = -1;
    if (trace === null)
      claimLoop(ctl, (i) => {
        mine++;
        runTask(ex, ctl, i, ws);
      });
    else {
      let idleFrom = performance.now();
      claimLoop(ctl, (i) => {
        const t = performance.now();
        if (joined < 0 && i > mine) joined = t;
        trace.gateMs += t - idleFrom;
        mine++;
        runTask(ex, ctl, i, ws);
        idleFrom = performance.now();
      });
      trace.joined = joined >= 0 ? joined : mine < total ? performance.now() : -1;
    }
    return mine;
  }

  /** What a traced job met as it started (gemmConfig.jobTrace). */
  private traceStart(): JobStart {
    const ctl = this.ctl;
    const asleep = Atomics.load(ctl, SLEEPERS) > 0;
    const claimed = Atomics.load(ctl, BG_WORK) & 0xffff,
      posted = Atomics.load(ctl, BG_WORK) >>> 16,
      done = Atomics.load(ctl, BG_DONE);
    return { t0: performance.now(), busy: claimed > done, posted, asleep, joined: -1, gateMs: 0 };
  }

  private traceEnd(s: JobStart, what: string, tasks: number, callerTasks: number, t1: number, work: number): void {
    const t2 = performance.now();
    gemmConfig.jobTrace?.({
      what,
      work,
      tasks,
      callerTasks,
      backgroundBusy: s.busy,
      workersAsleep: s.asleep,
      joinMs: s.joined < 0 ? -1 : s.joined - s.t0,
      backgroundPosted: s.posted,
      workMs: t1 - s.t0,
      waitMs: t2 - t1,
      gateMs: s.gateMs,
    });
  }

  /** Elements copied for `items` operands of `size` elements spaced `stride` apart. */
  private static span(stride: number, size: number, items: number): number {
    // Dense, overlapping or broadcast operands are copied as one span; gappy ones compactly.
    return stride <= size ? (items - 1) * stride + size : items * size;
  }

  /** Scratch layout for `items` batch items from item `b0`; resident A / B are addressed in place. */
  private layout(g: Gemm, b0: number, items: number, base: number, threaded: boolean): Layout {
    const { m, n, k } = g;
    const nPad = align(n, this.cfg.nr);
    const aIn = this.arena.owns(g.a),
      bIn = this.arena.owns(g.b);
    // Pitched operands are copied with their pitch (whole spans, one copy when the items abut or interleave).
    const [aSize, bSize, cSize] = storedSpans(g);
    const aSpan = aIn ? 0 : align(WasmGemm.span(g.strideA, aSize, items) * 4, 64);
    const bSpan = bIn ? 0 : align(WasmGemm.span(g.strideB, bSize, items) * 4, 64);
    const a = aIn ? g.a.byteOffset + (g.aOffset + b0 * g.strideA) * 4 : base;
    const b = bIn ? g.b.byteOffset + (g.bOffset + b0 * g.strideB) * 4 : base + aSpan;
    const pb = base + aSpan + bSpan;
    const pbStep = g.strideB === 0 ? 0 : k * nPad * 4;
    const cHeap = pb + (threaded ? (g.strideB === 0 ? 1 : items) * k * nPad * 4 : 0);
    // A resident C whose rows are whole NR-column tiles is written where it lives (the macro-kernel
    // stores no row past m, so m may be ragged), unless it overlaps an operand read in place (the
    // kernel would overwrite values it has yet to read).
    const cAt = g.c.byteOffset + (g.cOffset + b0 * g.strideC) * 4;
    const cEnd = cAt + ((items - 1) * g.strideC + cSize) * 4;
    const apart = (inPlace: boolean, at: number, stride: number, size: number) =>
      !inPlace || at + ((items - 1) * stride + size) * 4 <= cAt || cEnd <= at;
    const residentApart = this.arena.owns(g.c) && apart(aIn, a, g.strideA, aSize) && apart(bIn, b, g.strideB, bSize);
    // A ragged n (an LM head's 258 columns): its whole tiles in place, the last partial tile through an
    // m x NR scratch (one item: a batch's tails would each need one).
    const whole = n % this.cfg.nr === 0;
    const split = !whole && residentApart && items === 1 && n > this.cfg.nr;
    const cIn = (whole || split) && residentApart;
    const nIn = split ? n - (n % this.cfg.nr) : n;
    const tail = split ? cHeap : -1;
    const c = cIn ? cAt : cHeap;
    const cStep = cIn ? g.strideC * 4 : align(m, this.cfg.mr) * nPad * 4;
    return {
      a,
      aStep: (aIn || g.strideA <= aSize ? g.strideA : aSize) * 4,
      aIn,
      aSize,
      bSize,
      b,
      bStep: (bIn || g.strideB <= bSize ? g.strideB : bSize) * 4,
      bIn,
      pb,
      pbStep,
      c,
      cStep,
      cIn,
      ldc: cIn ? g.ldc * 4 : nPad * 4,
      nIn,
      tail,
      end: split ? tail + align(m, this.cfg.mr) * this.cfg.nr * 4 : cIn ? cHeap : c + items * cStep,
    };
  }

  /** Copies `items` operands (first at element `off`) into the heap at byte address `dst`. */
  private copyIn(src: Float32Array, off: number, stride: number, size: number, items: number, dst: number): void {
    if (stride <= size) {
      this.f32.set(src.subarray(off, off + (items - 1) * stride + size), dst / 4);
      return;
    }
    for (let t = 0; t < items; t++)
      this.f32.set(src.subarray(off + t * stride, off + t * stride + size), dst / 4 + t * size);
  }

  /** Copies rows [m0, m1) x cols [n0, n1) of padded heap C item `t` of the chunk out to g.c. */
  private copyOut(g: Gemm, L: Layout, b0: number, t: number, m0: number, m1: number, n0: number, n1: number): void {
    if (L.tail >= 0 && n1 > L.nIn) {
      // The tail scratch's rows are NR wide and start at column nIn (one item: t = 0).
      const { nr } = this.cfg;
      const src = L.tail / 4 - L.nIn;
      const dst = g.cOffset + b0 * g.strideC;
      for (let i = m0; i < m1; i++)
        g.c.set(this.f32.subarray(src + i * nr + n0, src + i * nr + n1), dst + i * g.ldc + n0);
      return;
    }
    if (L.cIn) return;
    const nPad = align(g.n, this.cfg.nr);
    const src = (L.c + t * L.cStep) / 4;
    const dst = g.cOffset + (b0 + t) * g.strideC;
    if (nPad === g.n && g.ldc === g.n && n0 === 0 && n1 === g.n) {
      g.c.set(this.f32.subarray(src + m0 * nPad, src + m1 * nPad), dst + m0 * g.n);
      return;
    }
    for (let i = m0; i < m1; i++)
      g.c.set(this.f32.subarray(src + i * nPad + n0, src + i * nPad + n1), dst + i * g.ldc + n0);
  }

  /** Byte strides of element (row, col) of op(A) and op(B). */
  private static strides(g: Gemm): [number, number, number, number] {
    return [g.transA ? 4 : g.lda * 4, g.transA ? g.lda * 4 : 4, g.transB ? 4 : g.ldb * 4, g.transB ? g.ldb * 4 : 4];
  }

  private runSingle(g: Gemm, b0: number, items: number, L: Layout): void {
    const { m, n, k } = g;
    const [rsA, csA, rsB, csB] = WasmGemm.strides(g);
    const ldc = L.ldc;
    if (!L.aIn) this.copyIn(g.a, g.aOffset + b0 * g.strideA, g.strideA, L.aSize, items, L.a);
    if (!L.bIn) this.copyIn(g.b, g.bOffset + b0 * g.strideB, g.strideB, L.bSize, items, L.b);
    const ws = this.wsOf(0);
    const nIn = L.nIn;
    for (let t = 0; t < items; t++) {
      const a = L.a + t * L.aStep,
        b = L.b + t * L.bStep;
      this.ex.gemm(0, m, 0, nIn, k, a, rsA, csA, b, rsB, csB, L.c + t * L.cStep, ldc, ws);
      this.copyOut(g, L, b0, t, 0, m, 0, nIn);
      if (nIn === n) continue;
      // The partial last tile into the tail scratch, addressed as if its column nIn were column 0 there.
      this.ex.gemm(0, m, nIn, n, k, a, rsA, csA, b, rsB, csB, L.tail - nIn * 4, this.cfg.nr * 4, ws);
      this.copyOut(g, L, b0, t, 0, m, nIn, n);
    }
  }

  private runThreaded(g: Gemm, b0: number, items: number, L: Layout, threads: number): void {
    const { m, n, k } = g;
    const { nr } = this.cfg;
    const [rsA, csA, rsB, csB] = WasmGemm.strides(g);
    const nPad = align(n, nr);
    const ldc = L.ldc,
      ldp = nPad * 4;
    const ctl = this.ctl;
    const pool = this.pool as WorkerPool;

    // Pack tasks: split each distinct B's column panels so every thread gets some.
    const bItems = g.strideB === 0 ? 1 : items;
    const panels = Math.ceil(n / nr);
    const perB = Math.max(1, Math.min(panels, Math.ceil((2 * threads) / bItems)));
    const packs: number[][] = [];
    for (let t = 0; t < bItems; t++) {
      for (let p = 0; p < perB; p++) {
        const n0 = Math.floor((p * panels) / perB) * nr,
          n1 = Math.min(n, Math.floor(((p + 1) * panels) / perB) * nr);
        if (n1 > n0) packs.push([TASK_PACK_B, L.b + t * L.bStep, rsB, csB, k, n0, n1, L.pb + t * L.pbStep, ldp]);
      }
    }
    // With a tail (L.tail), the stripes cover columns [0, nIn) in place and one more task the tail.
    const nIn = L.nIn;
    const stripes = this.plan(m, nIn, items, threads, MAX_TASKS - packs.length - 1);
    if (nIn < n) stripes.push({ item: 0, count: 1, m0: 0, m1: m, n0: nIn, n1: n, tail: true });
    const P = packs.length;
    packs.forEach((w, i) => {
      ctl.fill(0, TABLE + i * TASK_INTS, TABLE + (i + 1) * TASK_INTS);
      ctl.set(w, TABLE + i * TASK_INTS);
    });
    stripes.forEach((s, i) => {
      const o = TABLE + (P + i) * TASK_INTS;
      ctl.fill(0, o, o + TASK_INTS);
      ctl.set(
        [
          TASK_GEMM,
          s.m0,
          s.m1,
          s.n0,
          s.n1,
          k,
          L.a + s.item * L.aStep,
          rsA,
          csA,
          L.pb + s.item * L.pbStep,
          ldp,
          s.tail ? L.tail - nIn * 4 : L.c + s.item * L.cStep,
          s.tail ? nr * 4 : ldc,
          s.count,
          L.aStep,
          L.pbStep,
          L.cStep,
        ],
        o,
      );
    });
    const total = P + stripes.length;

    const trace = gemmConfig.jobTrace !== null ? this.traceStart() : null;
    if (!L.bIn) this.copyIn(g.b, g.bOffset + b0 * g.strideB, g.strideB, L.bSize, items, L.b);
    pool.start(ctl, total, P, P + 1, gemmConfig.spinMicros);
    if (!L.aIn) this.copyIn(g.a, g.aOffset + b0 * g.strideA, g.strideA, L.aSize, items, L.a);
    Atomics.add(ctl, DONE, 1); // the "A is in" completion that stripe tasks are gated on
    Atomics.notify(ctl, DONE);

    const mine = this.claimOnCaller(total, trace);
    const t1 = trace ? performance.now() : 0;

    // Copy finished stripes out while the workers complete the rest.
    reportFinished(ctl, P, stripes.length, (i) => {
      const s = stripes[i]!;
      for (let t = s.item; t < s.item + s.count; t++) this.copyOut(g, L, b0, t, s.m0, s.m1, s.n0, s.n1);
    });
    for (let d = Atomics.load(ctl, DONE); d < total + 1; d = Atomics.load(ctl, DONE)) waitChange(ctl, DONE, d);
    if (trace) this.traceEnd(trace, 'sgemm', total, mine, t1, items * m * n * k);
    if (Atomics.load(ctl, ERROR) !== 0) throw new Error(`sgemm: a GEMM task failed: ${taskErrorText(ctl, ERROR_TEXT)}`);
  }

  /**
   * Splits `items` GEMMs into about threads * tasksPerThread stripes: whole runs of batch items
   * when there are enough of them, otherwise tile-aligned row (or, for short wide C, column)
   * stripes of each item.
   */
  private plan(m: number, n: number, items: number, threads: number, maxTasks: number): Stripe[] {
    // target <= maxTasks / 2 keeps items * ceil(target / items) < maxTasks below.
    const target = Math.max(1, Math.min(Math.floor(maxTasks / 2), threads * gemmConfig.tasksPerThread));
    const out: Stripe[] = [];
    if (items >= target) {
      for (let i = 0; i < target; i++) {
        const t0 = Math.floor((i * items) / target),
          t1 = Math.floor(((i + 1) * items) / target);
        out.push({ item: t0, count: t1 - t0, m0: 0, m1: m, n0: 0, n1: n });
      }
      return out;
    }
    const { mr, nr } = this.cfg;
    const per = Math.ceil(target / items);
    const rowTiles = Math.ceil(m / mr),
      colTiles = Math.ceil(n / nr);
    const byRows = rowTiles >= per || rowTiles >= colTiles;
    const pieces = Math.min(per, byRows ? rowTiles : colTiles);
    for (let t = 0; t < items; t++) {
      for (let p = 0; p < pieces; p++) {
        const tiles = byRows ? rowTiles : colTiles,
          step = byRows ? mr : nr,
          dim = byRows ? m : n;
        const lo = Math.floor((p * tiles) / pieces) * step,
          hi = Math.min(dim, Math.floor(((p + 1) * tiles) / pieces) * step);
        out.push(
          byRows
            ? { item: t, count: 1, m0: lo, m1: hi, n0: 0, n1: n }
            : { item: t, count: 1, m0: 0, m1: m, n0: lo, n1: hi },
        );
      }
    }
    return out;
  }
}
