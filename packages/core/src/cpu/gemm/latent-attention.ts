// MLA's absorbed attention on f32 operands as one job of the GEMM engine: every sequence's queries
// (S positions x H heads, a C-wide latent part and an R-wide rotary part) against its latent rows,
// which serve as keys and values. Queries are cut into blocks of 256 / H positions (a block's rows see
// the same key range), blocks into row ranges, a task each (latent-attention-task.ts), which the
// calling thread and the GEMM workers claim from one task table. A row's result depends only on its
// block's key range and tiles, never on how rows are split into tasks or which thread runs them, so
// any thread count gives the same bits.
import { align, ScratchLayout } from './arena.js';
import { gemmConfig } from './config.js';
import { getEngine, effectiveThreads } from './runtime.js';
import type { WasmGemm } from './wasm-engine.js';
import { MAX_TASKS, TABLE, TASK_INTS, TASK_LATENT_ATTENTION } from './worker-pool.js';

/** One sequence: its queries and outputs are rows [n·S·H, (n+1)·S·H) of the batch (n its index). */
export interface LatentSequence {
  /** keys the sequence holds */
  T: number;
  /** query position s sees keys j <= offset + s */
  offset: number;
  /** where key j's row lives in kv / kr: rowOf[j], or base + j when rowOf is null */
  rowOf: Int32Array | null;
  base: number;
}

export interface LatentAttentionArgs {
  S: number;
  H: number;
  C: number;
  R: number;
  scale: number;
  /** queries [N, S, H, C] and [N, S, H, R] (N = seqs.length) */
  qL: Float32Array;
  qR: Float32Array;
  /** latent rows (C wide) and rotary key rows (R wide) */
  kv: Float32Array;
  kr: Float32Array;
  seqs: readonly LatentSequence[];
  /** output [N, S, H, C] */
  out: Float32Array;
}

/** Query rows per block (the block's positions share one key range and its 512-key tiles). */
const BLOCK_ROWS = 256;
/** Keys per tile (latent-attention-task.ts's literal). */
const TILE_KEYS = 512;
/** Words per thread in the table of per-thread task space (latent-attention-task.ts reads it). */
const SPACE_WORDS = 6;
/** Fewest rows a task is cut to (below this, packing each tile's keys again costs more than it spreads). */
const MIN_TASK_ROWS = 32;

interface Task {
  seq: number;
  /** first row in the sequence (position · H + head) and row count */
  row: number;
  rows: number;
  limBase: number;
  r0: number;
  kEnd: number;
}

/** Splits the queries into tasks, larger key ranges first (so the last tasks claimed are short). */
function planTasks(a: LatentAttentionArgs, threads: number): Task[] {
  const { S, H } = a;
  const tq = Math.max(1, Math.floor(BLOCK_ROWS / H));
  const total = a.seqs.length * S * H;
  const perTask =
    threads > 1 ? Math.max(MIN_TASK_ROWS, align(Math.ceil(total / (threads * gemmConfig.tasksPerThread)), 4)) : total;
  const tasks: Task[] = [];
  a.seqs.forEach(({ T, offset }, seq) => {
    for (let s0 = 0; s0 < S; s0 += tq) {
      const s1 = Math.min(S, s0 + tq);
      const blockRows = (s1 - s0) * H;
      const kEnd = Math.max(0, Math.min(T, offset + s1));
      const pieces = Math.ceil(blockRows / perTask);
      for (let i = 0; i < pieces; i++) {
        const r0 = align(Math.floor((i * blockRows) / pieces), 4);
        const r1 = i + 1 === pieces ? blockRows : align(Math.floor(((i + 1) * blockRows) / pieces), 4);
        if (r1 > r0) tasks.push({ seq, row: s0 * H + r0, rows: r1 - r0, limBase: offset + s0, r0, kEnd });
      }
    }
  });
  return tasks.sort((x, y) => y.kEnd - x.kEnd);
}

function check(a: LatentAttentionArgs): void {
  const { S, H, C, R, seqs } = a;
  const N = seqs.length;
  for (const [name, v] of Object.entries({ S, H, C, R }))
    if (!(Number.isInteger(v) && v >= 1))
      throw new RangeError(`latentAttention: ${name} must be an integer >= 1, got ${v}`);
  if (a.qL.length < N * S * H * C || a.qR.length < N * S * H * R || a.out.length < N * S * H * C)
    throw new RangeError(
      `latentAttention: ${N} sequences of [${S}, ${H}] queries need qL and out of ${N * S * H * C} and qR of ${N * S * H * R} elements (got ${a.qL.length}, ${a.out.length}, ${a.qR.length})`,
    );
  for (const [n, q] of seqs.entries()) {
    if (!(Number.isInteger(q.T) && q.T >= 0) || (q.rowOf && q.rowOf.length < q.T))
      throw new RangeError(`latentAttention: sequence ${n} holds ${q.T} keys but maps ${q.rowOf?.length ?? q.T}`);
    let last = q.base + q.T; // rows [0, last) are read
    if (q.rowOf) {
      last = 0;
      for (let j = 0; j < q.T; j++) {
        const row = q.rowOf[j]!;
        if (row < 0) throw new RangeError(`latentAttention: sequence ${n} maps key ${j} to row ${row}`);
        if (row >= last) last = row + 1;
      }
    }
    if (last * C > a.kv.length || last * R > a.kr.length)
      throw new RangeError(
        `latentAttention: sequence ${n} reads key row ${last - 1}, past kv (${a.kv.length / C} rows) or kr (${a.kr.length / R} rows)`,
      );
  }
}

/**
 * out = softmax(q · keysᵀ, causal) · values per sequence (see LatentAttentionArgs), on the GEMM engine's
 * threads. Returns false without running when there is no wasm engine (the caller keeps its own loops).
 */
export function latentAttention(a: LatentAttentionArgs): boolean {
  const e = gemmConfig.forceJs ? null : getEngine();
  if (!e) return false;
  check(a);
  const threads = effectiveThreads(e);
  const tasks = planTasks(a, e.canThread() ? threads : 1);
  for (let i = 0; i < tasks.length; i += MAX_TASKS) runChunk(e, a, tasks.slice(i, i + MAX_TASKS), threads);
  return true;
}

/** Whether two arrays share bytes (views of one buffer whose ranges meet). */
function overlaps(x: Float32Array, y: Float32Array): boolean {
  return (
    x.buffer === y.buffer && x.byteOffset < y.byteOffset + y.byteLength && y.byteOffset < x.byteOffset + x.byteLength
  );
}

/**
 * Stages a chunk's keys, runs its tasks and has their outputs written. Queries in the engine's memory
 * are read where they lie (each task scales its rows into its own space), others staged; an output
 * there is written where it lies unless it overlaps queries read in place, else staged and copied out.
 */
function runChunk(e: WasmGemm, a: LatentAttentionArgs, tasks: Task[], threads: number): void {
  const { S, H, C, R, scale } = a;
  const scratch = new ScratchLayout();
  const { take } = scratch;
  const qlIn = e.arena.owns(a.qL),
    qrIn = e.arena.owns(a.qR);
  // (keys are always staged; queries read in place must not be overwritten under another task)
  const outIn = e.arena.owns(a.out) && !((qlIn && overlaps(a.qL, a.out)) || (qrIn && overlaps(a.qR, a.out)));
  // keys of each sequence the chunk reads (up to the furthest key range its tasks see)
  const keyEnd = new Map<number, number>();
  for (const t of tasks) keyEnd.set(t.seq, Math.max(keyEnd.get(t.seq) ?? 0, t.kEnd));
  const keyAt = new Map([...keyEnd].map(([seq, n]) => [seq, [take(n * C * 4), take(n * R * 4)] as const]));
  const ldo = align(C, 8);
  // Per task: its staged queries and output (read and written where they lie when in the engine's memory).
  const at = tasks.map((t) => ({
    qc: qlIn ? -1 : take(t.rows * C * 4),
    qr: qrIn ? -1 : take(t.rows * R * 4),
    out: outIn ? -1 : take(t.rows * C * 4),
  }));
  // Per thread: the working space of the task it runs (a thread runs one at a time), laid out for the
  // chunk's largest task — scores, P, P·V and the f64 accumulators (then the scaled queries): at 512
  // tokens 2 threads' 2.6 MB where 16 tasks' took 42 MB (first touched by a prefill's first layer).
  const rowsMax = Math.max(...tasks.map((t) => t.rows));
  const ld = align(Math.min(TILE_KEYS, Math.max(...tasks.map((t) => t.kEnd))), 8);
  const rowsPad = align(rowsMax, 4);
  const workspaces = e.workspaces(threads);
  const spaces = workspaces.map(() => ({
    s1: take(rowsPad * ld * 4),
    s2: take(rowsPad * ld * 4),
    p: take(rowsMax * ld * 4),
    o: take(rowsPad * ldo * 4),
    // f64 acc, m and l, then the scaled queries (f32, each block 64-byte aligned: the task's layout)
    acc: take(align((rowsMax * C + 2 * rowsMax) * 8) + align(rowsMax * C * 4) + rowsMax * R * 4),
  }));
  // [workspace, s1, s2, p, o, acc] per thread: a task finds its thread's entry by its workspace
  const spaceTable = take(spaces.length * SPACE_WORDS * 4);
  const scaleAt = take(8);
  const base = e.stage(scratch.bytes, `latent attention: ${tasks.length} tasks`);
  const heap = e.heap();
  new Float64Array(heap.buffer, base + scaleAt, 1)[0] = scale;
  const entries = new Uint32Array(heap.buffer, base + spaceTable, spaces.length * SPACE_WORDS);
  spaces.forEach((w, i) =>
    entries.set([workspaces[i]!, ...[w.s1, w.s2, w.p, w.o, w.acc].map((x) => base + x)], i * SPACE_WORDS),
  );
  for (const [seq, [kvAt, krAt]] of keyAt) {
    const { rowOf, base: row0 } = a.seqs[seq]!;
    const n = keyEnd.get(seq)!;
    // one contiguous copy per run of consecutive rows (a paged cache's block)
    for (let j = 0; j < n; ) {
      const row = rowOf ? rowOf[j]! : row0 + j;
      let run = 1;
      if (rowOf) while (j + run < n && rowOf[j + run] === row + run) run++;
      else run = n - j;
      heap.set(a.kv.subarray(row * C, (row + run) * C), (base + kvAt) / 4 + j * C);
      heap.set(a.kr.subarray(row * R, (row + run) * R), (base + krAt) / 4 + j * R);
      j += run;
    }
  }
  const table = e.taskTable();
  tasks.forEach((t, i) => {
    const w = at[i]!;
    const q0 = t.seq * S * H + t.row;
    // staged as they are: each task scales its own rows (in parallel)
    if (!qlIn) heap.set(a.qL.subarray(q0 * C, (q0 + t.rows) * C), (base + w.qc) / 4);
    if (!qrIn) heap.set(a.qR.subarray(q0 * R, (q0 + t.rows) * R), (base + w.qr) / 4);
    const [kvAt, krAt] = keyAt.get(t.seq)!;
    const o = TABLE + i * TASK_INTS;
    table.fill(0, o, o + TASK_INTS);
    table.set(
      [
        TASK_LATENT_ATTENTION,
        t.rows,
        H,
        C,
        R,
        t.limBase,
        t.r0,
        t.kEnd,
        qlIn ? a.qL.byteOffset + q0 * C * 4 : base + w.qc,
        qrIn ? a.qR.byteOffset + q0 * R * 4 : base + w.qr,
        base + kvAt,
        base + krAt,
        outIn ? a.out.byteOffset + q0 * C * 4 : base + w.out,
        base + spaceTable,
        spaces.length,
        0,
        0,
        0,
        base + scaleAt,
      ],
      o,
    );
  });
  e.runTasks(tasks.length, threads, 'latent attention');
  if (outIn) return;
  tasks.forEach((t, i) => {
    const from = (base + at[i]!.out) / 4;
    a.out.set(heap.subarray(from, from + t.rows * C), (t.seq * S * H + t.row) * C);
  });
}
