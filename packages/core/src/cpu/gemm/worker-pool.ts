// Node worker threads for the wasm GEMM, driven synchronously from the calling thread.
//
// Protocol (Int32 words at the start of the shared wasm memory):
//   SEQ  : bumped once per job; idle workers Atomics.wait on it.
//   WORK : (taskCount << 16) | nextTask. A task is claimed by compare-exchanging nextTask + 1, so
//          claim and count change together: a worker that wakes late can only ever claim a task
//          of the job that is live at that instant, never a stale or a duplicated one.
//   DONE : completions (tasks, plus any the caller posts itself); Atomics.notify'd after each.
//   GATED_FROM, GATE: tasks with index >= GATED_FROM start only once DONE >= GATE. Claims are made
//          in index order, so everything a gated task depends on is already claimed: no deadlock.
//   ERROR: set when a task threw.
//   SLEEPERS: workers about to sleep on SEQ count themselves first, so a job start notifies (a
//          system call) only when someone may be asleep; one that counts itself late sees SEQ moved.
//   ENABLED: workers whose slot exceeds it sit jobs out. Workers are never terminated: one killed
//          while holding a claimed task would leave the caller waiting forever.
//   BG_WORK, BG_DONE, BG_ERROR: the background queue (deferred-products.ts): entries
//          from BACKGROUND_TABLE on, claimed like WORK's, run by the workers whenever no job is live
//          (a job started meanwhile is joined first); posting one moves SEQ, so idle workers come
//          for it. The caller runs what is left when it needs the results.
//   SPIN_US: microseconds a worker keeps polling SEQ after its last task before it sleeps (set from
//          gemmConfig.spinMicros at every job start): a decode step's few hundred small products
//          then find the workers awake instead of each paying a futex wake-up, and an idle process
//          stops burning CPU that long after its last product.
// Task table: TASK_INTS words per task starting at TABLE (fields: see runTask); the last word is
// set to 1 when the task has finished, so the caller can copy results out while others still run.
// The caller runs tasks too, so a job completes even before any worker has started.
import type * as WorkerThreads from 'node:worker_threads';
import type * as Os from 'node:os';
import { PAGE } from './arena.js';
import { packI16XTask } from './i16-pack-x-task.js';
import { latentAttentionTask } from './latent-attention-task.js';
import { trainingAttentionTask } from './training-attention-task.js';
import { ROW_KERNELS, rowKernelTask } from './row-kernel-task.js';
import { HOLD_YOUNG_GENERATION_FLAG, youngGenerationHeld } from '../young-generation.js';

export const SEQ = 0;
export const WORK = 1;
export const DONE = 2;
export const TIME_TASKS = 3; // nonzero: workers add each task's µs to JOB_BUSY_US / BG_BUSY_US (bench diagnostics)
export const ERROR = 4;
export const WORKER_TASKS = 5; // tasks run by workers since start (diagnostics/tests)
export const GATED_FROM = 6;
export const GATE = 7;
export const ENABLED = 8; // workers with slot <= ENABLED take part (setGemmThreads can lower it)
export const SLEEPERS = 9; // workers blocked (or about to block) in Atomics.wait on SEQ
export const SPIN_US = 10; // how long workers poll for the next job before sleeping
export const BG_WORK = 11; // (background tasks posted << 16) | next unclaimed one
export const BG_DONE = 12; // background tasks finished
export const BG_ERROR = 13; // set when a background task threw
export const JOB_BUSY_US = 14; // µs workers spent in job tasks while TIME_TASKS is set
export const BG_BUSY_US = 15; // µs workers spent in background tasks while TIME_TASKS is set
export const TABLE = 16;
export const TASK_INTS = 20;
export const TASK_DONE = 19; // word within a task entry
export const TASK_PACK_B = 1;
export const TASK_GEMM = 2;
export const TASK_GEMV = 3;
export const TASK_WEIGHT_GEMM = 4;
export const TASK_LATENT_ATTENTION = 5;
export const TASK_TRAINING_ATTENTION = 6;
export const TASK_GEMM_OWN_B = 7;
export const TASK_ROW_KERNEL = 8;
export const TASK_PACK_I16X = 9;
export const TASK_HEAD_SCREEN = 10;
export const MAX_TASKS = 512;
/** Background task j is table entry BACKGROUND_TABLE + j (after the jobs' entries). */
export const BACKGROUND_TABLE = MAX_TASKS;
/** Background tasks at most before their results are collected (the table's room in CTRL_BYTES). */
export const MAX_BACKGROUND = 256;
/**
 * The first failed job task's error (ERROR_TEXT) and background task's (BG_ERROR_TEXT), as UTF-16 codes
 * one per word, 0-terminated, after the task table: a worker's exception never reaches the caller's
 * stack, so its text travels here (claimLoop / claimBackground write it; taskErrorText reads it).
 */
export const ERROR_TEXT = TABLE + (MAX_TASKS + MAX_BACKGROUND) * TASK_INTS;
export const BG_ERROR_TEXT = ERROR_TEXT + 200;
/**
 * µs workers spent inside a job between claiming a task and starting it while TIME_TASKS is set: the
 * gate's waits (GATED_FROM / GATE) and the claims (bench diagnostics). After the error texts.
 */
export const JOB_GATE_US = BG_ERROR_TEXT + 200;
/**
 * The memory's size in 64 KiB pages as the calling thread saw it when it last started a job or posted a
 * background task (after the gate clock). A worker whose memory.buffer is shorter refreshes it with
 * grow(0) before it runs a task: V8 (Node 20) updates another thread's view of a grown shared memory
 * only when that thread next handles an interrupt, so a task reading a header the caller had just
 * placed in new pages could see the old length ("Invalid typed array length", seen twice under load).
 */
export const MEMORY_PAGES = JOB_GATE_US + 1;
/** Characters an error text keeps (its words less the terminator). */
export const ERROR_TEXT_CHARS = 199;
/** Atomics.load polls (0.14–0.21 ms measured on the loaded 2-core machine) before the calling thread sleeps waiting for workers. */
export const SPIN = 20000;
/** Bytes reserved at address 0 for the control words and task table. */
export const CTRL_BYTES = 65536;

export interface KernelExports {
  gemv_f32(...args: number[]): void;
  gemv_bf16(...args: number[]): void;
  gemv_fp8(...args: number[]): void;
  gemm(...args: number[]): void;
  gemmPacked(...args: number[]): void;
  packBAll(...args: number[]): void;
  gemmW_f32(...args: number[]): void;
  gemmW_bf16(...args: number[]): void;
  gemmW_fp8(...args: number[]): void;
  gemmWI16_bf16(...args: number[]): void;
  gemmWI16_fp8(...args: number[]): void;
  packAI16(...args: number[]): void;
  /** latent-attention-task.ts's task, bound to this instance, its memory and the attention rows module */
  latentAttention(f: Int32Array, ws: number): void;
  /** training-attention-task.ts's task, bound likewise (with the exp module over the same memory) */
  trainingAttention(f: Int32Array, ws: number): void;
  /** row-kernel-task.ts's task, bound to the attention rows module's instance */
  rowKernel(f: Int32Array): void;
  /** i16-pack-x-task.ts's task, bound to this instance's packAI16 */
  packI16X(f: Int32Array): void;
  /** native/head-screen.cc's kernels (head-screen.ts), where the engine has the native kernels */
  headScreenPack?: (...args: number[]) => void;
  headScreen?: (...args: number[]) => void;
}

// runTask and claimLoop are embedded in the worker source via toString(), so they must stay
// self-contained: no imports, no module-level constants (the literal numbers mirror the above),
// and no nested functions (esbuild's keepNames, used by tsx, wraps those in a __name() helper).

/**
 * Task kinds (word 0):
 *   1 pack B : b rsB csB k n0 n1 pb ldp                        -> packBAll
 *   2 gemm   : m0 m1 n0 n1 k a rsA csA pb ldp c ldc count aStep pbStep cStep
 *              -> gemmPacked on `count` consecutive batch items
 *   3 gemv   : weightCode x m ldx k w ldw n0 n1 y ldy [s lds e] -> gemv_f32 (code 0) / gemv_bf16 (1) /
 *              gemv_fp8 (2, which also gets the thread's workspace for its block-scaled x rows)
 *   4 weight gemm : weightCode m n0 n1 k a rsA w ldw c ldc s lds -> gemmW_f32 (code 0) /
 *              gemmW_bf16 (1) / gemmW_fp8 (2) over rows [0, m), packing its own B~ blocks from the stored
 *              weight into the thread's workspace; codes 3 / 4 (i16 activations, i16-weight-gemm.ts: a is
 *              x's A~, rsA unused) -> gemmWI16_bf16 / gemmWI16_fp8
 *   5 latent attention : the fields in latent-attention-task.ts -> ex.latentAttention
 *   6 training attention : the fields in training-attention-task.ts -> ex.trainingAttention
 *   7 gemm packing its own B : m0 m1 n0 n1 k a rsA csA b rsB csB c ldc -> gemm (one product of a
 *              job of several, gemm-many.ts: no shared packed B, so no gate)
 *   8 row kernel : the fields in row-kernel-task.ts -> ex.rowKernel
 *   9 pack i16 x : rows of a weight product's x quantized into its A~ (i16-weight-gemm.ts,
 *              packI16XFields) -> ex.packI16X
 *  10 head screen : 0 and headScreenPack's 10 arguments, or 1 and headScreen's 11 (head-screen.ts) ->
 *              the native kernels
 */
export function runTask(ex: KernelExports, ctl: Int32Array, i: number, ws: number): void {
  const f = ctl.subarray(16 + i * 20, 36 + i * 20);
  if (f[0] === 5) {
    ex.latentAttention(f, ws);
    return;
  }
  if (f[0] === 6) {
    ex.trainingAttention(f, ws);
    return;
  }
  if (f[0] === 8) {
    ex.rowKernel(f);
    return;
  }
  if (f[0] === 9) {
    ex.packI16X(f);
    return;
  }
  if (f[0] === 10) {
    if (f[1] === 0)
      (ex.headScreenPack as (...args: number[]) => void)(
        f[2] as number,
        f[3] as number,
        f[4] as number,
        f[5] as number,
        f[6] as number,
        f[7] as number,
        f[8] as number,
        f[9] as number,
        f[10] as number,
        f[11] as number,
      );
    else
      (ex.headScreen as (...args: number[]) => void)(
        f[2] as number,
        f[3] as number,
        f[4] as number,
        f[5] as number,
        f[6] as number,
        f[7] as number,
        f[8] as number,
        f[9] as number,
        f[10] as number,
        f[11] as number,
        f[12] as number,
      );
    return;
  }
  if (f[0] === 3) {
    const gemv = f[1] === 0 ? ex.gemv_f32 : f[1] === 1 ? ex.gemv_bf16 : ex.gemv_fp8;
    gemv(
      f[2] as number,
      f[3] as number,
      f[4] as number,
      f[5] as number,
      f[6] as number,
      f[7] as number,
      f[8] as number,
      f[9] as number,
      f[10] as number,
      f[11] as number,
      f[12] as number,
      f[13] as number,
      f[14] as number,
      ws, // FP8: the block-scaled x rows
    );
    return;
  }
  if (f[0] === 4 && (f[1] as number) >= 3) {
    const i16 = f[1] === 3 ? ex.gemmWI16_bf16 : ex.gemmWI16_fp8;
    i16(
      f[2] as number,
      f[3] as number,
      f[4] as number,
      f[5] as number,
      f[6] as number,
      f[8] as number,
      f[9] as number,
      f[10] as number,
      f[11] as number,
      ws,
      f[12] as number,
      f[13] as number,
    );
    return;
  }
  if (f[0] === 4) {
    const code = f[1] as number;
    const drive = code === 0 ? ex.gemmW_f32 : code === 1 ? ex.gemmW_bf16 : ex.gemmW_fp8;
    drive(
      0,
      f[2] as number,
      f[3] as number,
      f[4] as number,
      f[5] as number,
      f[6] as number,
      f[7] as number,
      4,
      f[8] as number,
      f[9] as number,
      f[10] as number,
      f[11] as number,
      ws,
      f[12] as number,
      f[13] as number,
    );
    return;
  }
  if (f[0] === 7) {
    ex.gemm(
      f[1] as number,
      f[2] as number,
      f[3] as number,
      f[4] as number,
      f[5] as number,
      f[6] as number,
      f[7] as number,
      f[8] as number,
      f[9] as number,
      f[10] as number,
      f[11] as number,
      f[12] as number,
      f[13] as number,
      ws,
    );
    return;
  }
  if (f[0] === 1) {
    ex.packBAll(
      f[1] as number,
      f[2] as number,
      f[3] as number,
      f[4] as number,
      f[5] as number,
      f[6] as number,
      f[7] as number,
      f[8] as number,
    );
    return;
  }
  let a = f[6] as number,
    pb = f[9] as number,
    c = f[11] as number;
  for (let t = 0; t < (f[13] as number); t++) {
    ex.gemmPacked(
      f[1] as number,
      f[2] as number,
      f[3] as number,
      f[4] as number,
      f[5] as number,
      a,
      f[7] as number,
      f[8] as number,
      pb,
      f[10] as number,
      c,
      f[12] as number,
      ws,
    );
    a += f[14] as number;
    pb += f[15] as number;
    c += f[16] as number;
  }
}

export function claimLoop(ctl: Int32Array, run: (task: number) => void): void {
  for (;;) {
    const w = Atomics.load(ctl, 1);
    const n = w >>> 16;
    const i = w & 0xffff;
    if (i >= n) return;
    if (Atomics.compareExchange(ctl, 1, w, w + 1) !== w) continue;
    if (i >= Atomics.load(ctl, 6)) {
      const gate = Atomics.load(ctl, 7);
      for (let d = Atomics.load(ctl, 2); d < gate; d = Atomics.load(ctl, 2)) Atomics.wait(ctl, 2, d);
    }
    try {
      run(i);
    } catch (e) {
      // The first failure's text (ERROR_TEXT = 15376: embedded source, so a literal; a test checks it).
      if (Atomics.compareExchange(ctl, 4, 0, 1) === 0) {
        const text = String((e instanceof Error && e.stack) || e).slice(0, 199);
        for (let k = 0; k < text.length; k++) ctl[15376 + k] = text.charCodeAt(k);
        ctl[15376 + text.length] = 0;
      }
    }
    Atomics.store(ctl, 16 + i * 20 + 19, 1);
    Atomics.add(ctl, 2, 1);
    Atomics.notify(ctl, 2);
  }
}

/**
 * Claims and runs one background task (entry 512 + j); false when none is left unclaimed. Written
 * like claimLoop (embedded in the worker source); the caller uses it too when it collects results.
 */
export function claimBackground(ctl: Int32Array, run: (task: number) => void): boolean {
  const w = Atomics.load(ctl, 11);
  const i = w & 0xffff;
  if (i >= w >>> 16) return false;
  if (Atomics.compareExchange(ctl, 11, w, w + 1) !== w) return true;
  try {
    run(512 + i);
  } catch (e) {
    // As claimLoop's, at BG_ERROR_TEXT = 15576.
    if (Atomics.compareExchange(ctl, 13, 0, 1) === 0) {
      const text = String((e instanceof Error && e.stack) || e).slice(0, 199);
      for (let k = 0; k < text.length; k++) ctl[15576 + k] = text.charCodeAt(k);
      ctl[15576 + text.length] = 0;
    }
  }
  Atomics.store(ctl, 16 + (512 + i) * 20 + 19, 1);
  Atomics.add(ctl, 12, 1);
  Atomics.notify(ctl, 12);
  return true;
}

/** The error text claimLoop / claimBackground left at word `at` (ERROR_TEXT or BG_ERROR_TEXT). */
export function taskErrorText(ctl: Int32Array, at: number): string {
  let text = '';
  for (let k = 0; k < ERROR_TEXT_CHARS && ctl[at + k] !== 0; k++) text += String.fromCharCode(ctl[at + k] as number);
  return text;
}

function workerSource(): string {
  return `'use strict';
var __name = (fn) => fn; // in case a bundler's keepNames reached the embedded functions
const { workerData } = require('node:worker_threads');
const { module, expModule, memory, ws, slot, nativeFile, holdYoungGeneration } = workerData;
// V8 reset the young generation's growth factor as it configured this isolate (young-generation.ts).
if (holdYoungGeneration) require('node:v8').setFlagsFromString(${JSON.stringify(HOLD_YOUNG_GENERATION_FLAG)});
// The native kernels the module imports (native-kernels.ts), bound to this memory on this thread.
const nativeImports = nativeFile ? require(nativeFile).bind(new Uint8Array(memory.buffer)) : {};
const kernels = new WebAssembly.Instance(module, { env: { memory, ...nativeImports } }).exports;
const xp = new WebAssembly.Instance(expModule, { env: { memory } }).exports;
const latentAttentionTask = ${latentAttentionTask.toString()};
const trainingAttentionTask = ${trainingAttentionTask.toString()};
const rowKernelTask = ${rowKernelTask.toString()};
const packI16XTask = ${packI16XTask.toString()};
const rowKernels = ${JSON.stringify(ROW_KERNELS)}.map((name) => xp[name]);
const ex = {
  ...kernels,
  latentAttention: (f, ws) => latentAttentionTask(kernels, xp, memory, f, ws),
  trainingAttention: (f, ws) => trainingAttentionTask(kernels, xp, memory, f, ws),
  rowKernel: (f) => rowKernelTask(rowKernels, f),
  packI16X: (f) => packI16XTask(kernels.packAI16, f),
  headScreenPack: nativeImports.headScreenPack,
  headScreen: nativeImports.headScreen,
};
const ctl = new Int32Array(memory.buffer, 0, ${CTRL_BYTES / 4});
const runTask = ${runTask.toString()};
const claimLoop = ${claimLoop.toString()};
const claimBackground = ${claimBackground.toString()};
let idleFrom = 0; // timing: when this worker entered the job's claims or ended its last task
const run = (i) => {
  if (memory.buffer.byteLength < Atomics.load(ctl, ${MEMORY_PAGES}) * ${PAGE}) memory.grow(0); // see MEMORY_PAGES
  if (Atomics.load(ctl, ${TIME_TASKS}) === 0) runTask(ex, ctl, i, ws);
  else {
    const t0 = performance.now();
    if (i < ${BACKGROUND_TABLE}) Atomics.add(ctl, ${JOB_GATE_US}, Math.round((t0 - idleFrom) * 1000));
    runTask(ex, ctl, i, ws);
    idleFrom = performance.now();
    Atomics.add(ctl, i >= ${BACKGROUND_TABLE} ? ${BG_BUSY_US} : ${JOB_BUSY_US}, Math.round((idleFrom - t0) * 1000));
  }
  Atomics.add(ctl, ${WORKER_TASKS}, 1);
};
for (;;) {
  const seq = Atomics.load(ctl, ${SEQ});
  if (slot <= Atomics.load(ctl, ${ENABLED})) {
    if (Atomics.load(ctl, ${TIME_TASKS}) !== 0) idleFrom = performance.now();
    claimLoop(ctl, run);
    // Background tasks one at a time while no new job started (SEQ unmoved): a job is joined first.
    while (Atomics.load(ctl, ${SEQ}) === seq && claimBackground(ctl, run));
  }
  // Poll for up to SPIN_US first: back-to-back products (a decode step's) then skip the futex
  // wake-up. The clock is read once per 256 polls (it costs more than a poll).
  const until = performance.now() + Atomics.load(ctl, ${SPIN_US}) / 1000;
  for (let s = 1; Atomics.load(ctl, ${SEQ}) === seq; s++) if ((s & 255) === 0 && performance.now() >= until) break;
  Atomics.add(ctl, ${SLEEPERS}, 1);
  Atomics.wait(ctl, ${SEQ}, seq);
  Atomics.sub(ctl, ${SLEEPERS}, 1);
}
`;
}

export interface NodeBuiltins {
  workerThreads: typeof WorkerThreads;
  os: typeof Os;
}

let nodeBuiltins: NodeBuiltins | null | undefined;

/**
 * worker_threads and os, loaded synchronously on first use without a static import, so browser
 * bundles never see them. process.getBuiltinModule (Node >= 20.16) works in ESM and CJS alike,
 * sidestepping import.meta (empty in CJS builds) and require (absent in ESM).
 */
export function loadNodeBuiltins(): NodeBuiltins | null {
  if (nodeBuiltins !== undefined) return nodeBuiltins;
  nodeBuiltins = null;
  const proc = (
    globalThis as { process?: { versions?: { node?: string }; getBuiltinModule?: (id: string) => unknown } }
  ).process;
  if (proc?.versions?.node && typeof proc.getBuiltinModule === 'function') {
    try {
      const workerThreads = proc.getBuiltinModule('node:worker_threads') as typeof WorkerThreads | undefined;
      const os = proc.getBuiltinModule('node:os') as typeof Os | undefined;
      if (workerThreads && os) nodeBuiltins = { workerThreads, os };
    } catch {
      nodeBuiltins = null;
    }
  }
  return nodeBuiltins;
}

/** Worker i (1-based slot) uses workspace wsOf(i); slot 0 is the calling thread's. */
export class WorkerPool {
  private readonly workers: WorkerThreads.Worker[] = [];
  private broken = false;

  constructor(
    private readonly wt: typeof WorkerThreads,
    private readonly module: WebAssembly.Module,
    /** attention-rows-simd.ts's module over the same memory (both attention tasks' row passes) */
    private readonly expModule: WebAssembly.Module,
    private readonly memory: WebAssembly.Memory,
    private readonly wsOf: (slot: number) => number,
    /** the native kernels addon the module imports from (native-kernels.ts), if any */
    private readonly nativeFile?: string,
  ) {}

  /** Workers spawned so far (each owns a workspace slot, whether enabled or not). */
  get spawned(): number {
    return this.workers.length;
  }

  /** Makes `count` workers take part in jobs alongside the calling thread, spawning as needed. */
  resize(ctl: Int32Array, count: number): void {
    if (this.broken) return;
    while (this.workers.length < count) {
      const slot = this.workers.length + 1;
      const w = new this.wt.Worker(workerSource(), {
        eval: true,
        workerData: {
          module: this.module,
          expModule: this.expModule,
          memory: this.memory,
          ws: this.wsOf(slot),
          slot,
          nativeFile: this.nativeFile,
          holdYoungGeneration: youngGenerationHeld(),
        },
      });
      // A dead worker never claims tasks, so jobs still finish; stop using the pool after one.
      w.on('error', () => {
        this.broken = true;
      });
      w.unref();
      this.workers.push(w);
    }
    Atomics.store(ctl, ENABLED, count);
  }

  /** Publishes the next background task (already in the table at its entry) and wakes a worker for it. */
  postBackground(ctl: Int32Array): void {
    Atomics.store(ctl, MEMORY_PAGES, this.memory.buffer.byteLength / PAGE);
    Atomics.add(ctl, BG_WORK, 1 << 16);
    Atomics.add(ctl, SEQ, 1);
    if (Atomics.load(ctl, SLEEPERS) > 0) Atomics.notify(ctl, SEQ);
  }

  /**
   * Publishes tasks [0, count) (already in the table) and wakes the workers; the caller then
   * joins with claimLoop and waits for DONE to reach count plus its own posted completions.
   */
  start(ctl: Int32Array, count: number, gatedFrom: number, gate: number, spinMicros: number): void {
    if (count > MAX_TASKS) throw new Error('sgemm: too many tasks');
    Atomics.store(ctl, MEMORY_PAGES, this.memory.buffer.byteLength / PAGE);
    Atomics.store(ctl, SPIN_US, spinMicros);
    Atomics.store(ctl, DONE, 0);
    Atomics.store(ctl, ERROR, 0);
    Atomics.store(ctl, GATED_FROM, gatedFrom);
    Atomics.store(ctl, GATE, gate);
    Atomics.store(ctl, WORK, count << 16);
    Atomics.add(ctl, SEQ, 1);
    if (Atomics.load(ctl, SLEEPERS) > 0) Atomics.notify(ctl, SEQ);
  }
}
