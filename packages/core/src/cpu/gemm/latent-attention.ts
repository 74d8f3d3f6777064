// MLA's absorbed attention on f32 operands as one job of the GEMM engine: every sequence's queries
// (S positions x H heads, a C-wide latent part and an R-wide rotary part) against its latent rows,
// which serve as keys and values. Queries are cut into blocks of 256 / H positions (a block's rows see
// the same key range), blocks into row ranges, a task each (latent-attention-task.ts), which the
// calling thread and the GEMM workers claim from one task table. A row's result depends only on its
// block's key range and tiles, never on how rows are split into tasks or which thread runs them, so
// any thread count gives the same bits. A decode block (every row sees all its keys, too few rows to
// cut) of many keys is split by keys instead (flash-decoding): each piece's task leaves its
// unnormalized f64 softmax state in a region of its own, which the caller merges in piece order; the
// pieces depend on the key count alone, so the bits do not depend on the thread count either.
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
  /** the task reads keys [k0, kEnd) (k0 > 0 or a shorter kEnd: one piece of a key-split block) */
  k0: number;
  kEnd: number;
  /** whether the task is a key piece: it leaves its acc, m and l for mergePieces instead of writing out */
  piece: boolean;
}

/** A Task (one literal: every task has one object shape). */
function task(
  seq: number,
  row: number,
  rows: number,
  limBase: number,
  r0: number,
  k0: number,
  kEnd: number,
  piece: boolean,
): Task {
  return { seq, row, rows, limBase, r0, k0, kEnd, piece };
}

/** Key pieces of a block of `rows` rows that sees keys [0, kEnd), every row all of them when `allVisible`. */
function keyPieces(rows: number, allVisible: boolean, kEnd: number): number {
  if (!allVisible || rows > MIN_TASK_ROWS || kEnd < gemmConfig.latentSplitMinKeys) return 1;
  return Math.max(1, Math.min(gemmConfig.latentKeyPieces, Math.floor(kEnd / 8)));
}

/**
 * Splits the queries into tasks, larger key ranges first (so the last tasks claimed are short), as
 * groups: a block's key pieces form one group (merged together, kept in key order), any other task is
 * a group of one.
 */
function planTasks(a: LatentAttentionArgs, threads: number): Task[][] {
  const { S, H } = a;
  const tq = Math.max(1, Math.floor(BLOCK_ROWS / H));
  const total = a.seqs.length * S * H;
  const perTask =
    threads > 1 ? Math.max(MIN_TASK_ROWS, align(Math.ceil(total / (threads * gemmConfig.tasksPerThread)), 4)) : total;
  const groups: Task[][] = [];
  a.seqs.forEach(({ T, offset }, seq) => {
    for (let s0 = 0; s0 < S; s0 += tq) {
      const s1 = Math.min(S, s0 + tq);
      const blockRows = (s1 - s0) * H;
      const kEnd = Math.max(0, Math.min(T, offset + s1));
      const limBase = offset + s0;
      const split = keyPieces(blockRows, limBase >= kEnd - 1, kEnd);
      if (split > 1) {
        // piece edges on multiples of 8 keys (whole 8-wide score tiles); every piece holds keys
        const edge = (i: number) => (i === split ? kEnd : align(Math.floor((i * kEnd) / split), 8));
        groups.push(
          Array.from({ length: split }, (_, i) => task(seq, s0 * H, blockRows, limBase, 0, edge(i), edge(i + 1), true)),
        );
        continue;
      }
      const pieces = Math.ceil(blockRows / perTask);
      for (let i = 0; i < pieces; i++) {
        const r0 = align(Math.floor((i * blockRows) / pieces), 4);
        const r1 = i + 1 === pieces ? blockRows : align(Math.floor(((i + 1) * blockRows) / pieces), 4);
        if (r1 > r0) groups.push([task(seq, s0 * H + r0, r1 - r0, limBase, r0, 0, kEnd, false)]);
      }
    }
  });
  const keys = (g: Task[]) => g[0]!.kEnd - g[0]!.k0;
  return groups.sort((x, y) => keys(y) - keys(x));
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
  // chunks of at most MAX_TASKS tasks, never parting a group (its pieces are merged after their chunk)
  let chunk: Task[] = [];
  for (const group of planTasks(a, e.canThread() ? threads : 1)) {
    if (chunk.length + group.length > MAX_TASKS) {
      runChunk(e, a, chunk, threads);
      chunk = [];
    }
    chunk.push(...group);
  }
  if (chunk.length > 0) runChunk(e, a, chunk, threads);
  return true;
}

/** The pool row of key 0 when keys [0, n) of `q` lie in consecutive rows (read in place), else -1. */
function inPlaceRow(q: LatentSequence, n: number): number {
  const { rowOf } = q;
  if (!rowOf) return q.base;
  const row0 = n > 0 ? rowOf[0]! : 0;
  for (let j = 1; j < n; j++) if (rowOf[j] !== row0 + j) return -1;
  return row0;
}

/** Whether two arrays share bytes (views of one buffer whose ranges meet). */
function overlaps(x: Float32Array, y: Float32Array): boolean {
  return (
    x.buffer === y.buffer && x.byteOffset < y.byteOffset + y.byteLength && y.byteOffset < x.byteOffset + x.byteLength
  );
}

/** Words per task in runChunk's scratch offsets: its staged queries qc and qr, output, key piece state (-1: none). */
const TASK_AT = 4;
/** Per thread in runChunk's scratch offsets: s1, s2, p, o, acc (then the space table's entry adds the workspace). */
const SPACE_PARTS = SPACE_WORDS - 1;

/**
 * Stages a chunk's keys (unless read in place), runs its tasks and has their outputs written. Queries in
 * the engine's memory are read where they lie (each task scales its rows into its own space), others
 * staged; an output there is written where it lies unless it overlaps queries read in place, else
 * staged and copied out. A block's key pieces are merged into its output on this thread.
 * Plain loops into typed arrays, no arrays made by map(): such an array has another map (elements
 * kind) once the caller is optimized than before, which deoptimized this function in a request's
 * decode steps (docs/benchmarks.md, issue 13, eighteenth session).
 */
function runChunk(e: WasmGemm, a: LatentAttentionArgs, tasks: Task[], threads: number): void {
  const { S, H, C, R, scale } = a;
  const N = a.seqs.length;
  const scratch = new ScratchLayout();
  const { take } = scratch;
  const qlIn = e.arena.owns(a.qL),
    qrIn = e.arena.owns(a.qR);
  // (queries read in place must not be overwritten under another task)
  const outIn = e.arena.owns(a.out) && !((qlIn && overlaps(a.qL, a.out)) || (qrIn && overlaps(a.qR, a.out)));
  // One decode block's key pieces alone (a batch-1 step) wake sleeping workers only when the block is long
  // enough to pay for it; any other job uses the threads as whole blocks did (several blocks: all woken).
  const t0 = tasks[0]!;
  if (tasks.every((t) => t.piece && t.seq === t0.seq && t.row === t0.row)) {
    const keys = tasks.reduce((n, t) => n + t.kEnd - t.k0, 0);
    threads = e.rowJobThreads(threads, keys, gemmConfig.latentWakeMinKeys);
  }
  // keys of each sequence the chunk reads (up to the furthest key its tasks see): read where they are
  // when they lie in the engine's memory as one run of rows (a resident cache's sequence), else copied.
  // keyKv / keyKr: byte addresses of key 0 (in place) or offsets in the scratch (staged).
  const keyEnd = new Int32Array(N);
  for (const t of tasks) keyEnd[t.seq] = Math.max(keyEnd[t.seq]!, t.kEnd);
  const resident = e.arena.owns(a.kv) && e.arena.owns(a.kr);
  const keyKv = new Float64Array(N),
    keyKr = new Float64Array(N),
    keyPlaced = new Uint8Array(N),
    keyStaged = new Uint8Array(N);
  for (const t of tasks) {
    const seq = t.seq,
      n = keyEnd[seq]!;
    if (keyPlaced[seq]) continue; // (a sequence's first task places its keys)
    keyPlaced[seq] = 1;
    const row = resident ? inPlaceRow(a.seqs[seq]!, n) : -1;
    if (row >= 0) {
      keyKv[seq] = a.kv.byteOffset + row * C * 4;
      keyKr[seq] = a.kr.byteOffset + row * R * 4;
    } else {
      keyStaged[seq] = 1;
      keyKv[seq] = take(n * C * 4);
      keyKr[seq] = take(n * R * 4);
    }
  }
  const ldo = align(C, 8);
  // Per task: its staged queries and output (read and written where they lie when in the engine's
  // memory), and a key piece's own f64 state (acc, m, l), which outlives the task for the merge.
  const at = new Int32Array(tasks.length * TASK_AT);
  let rowsMax = 0,
    keysMax = 0;
  for (let i = 0; i < tasks.length; i++) {
    const t = tasks[i]!;
    at[i * TASK_AT] = qlIn ? -1 : take(t.rows * C * 4);
    at[i * TASK_AT + 1] = qrIn ? -1 : take(t.rows * R * 4);
    at[i * TASK_AT + 2] = outIn || t.piece ? -1 : take(t.rows * C * 4);
    at[i * TASK_AT + 3] = t.piece ? take((t.rows * C + 2 * t.rows) * 8) : -1;
    rowsMax = Math.max(rowsMax, t.rows);
    keysMax = Math.max(keysMax, t.kEnd - t.k0);
  }
  // Per thread: the working space of the task it runs (a thread runs one at a time), laid out for the
  // chunk's largest task — scores, P, P·V and the f64 accumulators (then the scaled queries): at 512
  // tokens 2 threads' 2.6 MB where 16 tasks' took 42 MB (first touched by a prefill's first layer).
  const ld = align(Math.min(TILE_KEYS, keysMax), 8);
  const rowsPad = align(rowsMax, 4);
  const workspaces = e.workspaces(threads);
  const spaces = new Int32Array(workspaces.length * SPACE_PARTS);
  for (let i = 0; i < workspaces.length; i++) {
    const w = i * SPACE_PARTS;
    spaces[w] = take(rowsPad * ld * 4); // s1
    spaces[w + 1] = take(rowsPad * ld * 4); // s2
    spaces[w + 2] = take(rowsMax * ld * 4); // p
    spaces[w + 3] = take(rowsPad * ldo * 4); // o
    // f64 acc, m and l, then the scaled queries (f32, each block 64-byte aligned: the task's layout)
    spaces[w + 4] = take(align((rowsMax * C + 2 * rowsMax) * 8) + align(rowsMax * C * 4) + rowsMax * R * 4);
  }
  // [workspace, s1, s2, p, o, acc] per thread: a task finds its thread's entry by its workspace
  const spaceTable = take(workspaces.length * SPACE_WORDS * 4);
  const scaleAt = take(8);
  const base = e.stage(scratch.bytes, `latent attention: ${tasks.length} tasks`);
  const heap = e.heap(),
    f64 = e.heapF64(),
    words = e.heapI32();
  f64[(base + scaleAt) / 8] = scale;
  for (let i = 0; i < workspaces.length; i++) {
    const o = (base + spaceTable) / 4 + i * SPACE_WORDS;
    words[o] = workspaces[i]!;
    for (let j = 0; j < SPACE_PARTS; j++) words[o + 1 + j] = base + spaces[i * SPACE_PARTS + j]!;
  }
  for (let seq = 0; seq < N; seq++) {
    if (keyStaged[seq] === 0) continue;
    const { rowOf, base: row0 } = a.seqs[seq]!;
    const n = keyEnd[seq]!;
    const kvAt = (base + keyKv[seq]!) / 4,
      krAt = (base + keyKr[seq]!) / 4;
    // one contiguous copy per run of consecutive rows (a paged cache's block)
    for (let j = 0; j < n; ) {
      const row = rowOf ? rowOf[j]! : row0 + j;
      let run = 1;
      if (rowOf) while (j + run < n && rowOf[j + run] === row + run) run++;
      else run = n - j;
      heap.set(a.kv.subarray(row * C, (row + run) * C), kvAt + j * C);
      heap.set(a.kr.subarray(row * R, (row + run) * R), krAt + j * R);
      j += run;
    }
  }
  const table = e.taskTable();
  for (let i = 0; i < tasks.length; i++) {
    const t = tasks[i]!;
    const q0 = t.seq * S * H + t.row;
    const qc = at[i * TASK_AT]!,
      qr = at[i * TASK_AT + 1]!,
      out = at[i * TASK_AT + 2]!,
      state = at[i * TASK_AT + 3]!;
    // staged as they are: each task scales its own rows (in parallel)
    if (!qlIn) heap.set(a.qL.subarray(q0 * C, (q0 + t.rows) * C), (base + qc) / 4);
    if (!qrIn) heap.set(a.qR.subarray(q0 * R, (q0 + t.rows) * R), (base + qr) / 4);
    const staged = keyStaged[t.seq] === 1;
    const kvAt = (staged ? base : 0) + keyKv[t.seq]!,
      krAt = (staged ? base : 0) + keyKr[t.seq]!;
    const o = TABLE + i * TASK_INTS;
    table.fill(0, o, o + TASK_INTS);
    table[o] = TASK_LATENT_ATTENTION;
    table[o + 1] = t.rows;
    table[o + 2] = H;
    table[o + 3] = C;
    table[o + 4] = R;
    table[o + 5] = t.limBase - t.k0;
    table[o + 6] = t.r0;
    table[o + 7] = t.kEnd - t.k0;
    table[o + 8] = qlIn ? a.qL.byteOffset + q0 * C * 4 : base + qc;
    table[o + 9] = qrIn ? a.qR.byteOffset + q0 * R * 4 : base + qr;
    table[o + 10] = kvAt + t.k0 * C * 4;
    table[o + 11] = krAt + t.k0 * R * 4;
    table[o + 12] = t.piece ? 0 : outIn ? a.out.byteOffset + q0 * C * 4 : base + out;
    table[o + 13] = base + spaceTable;
    table[o + 14] = workspaces.length;
    table[o + 15] = t.piece ? base + state : 0;
    table[o + 18] = base + scaleAt;
  }
  e.runTasks(tasks.length, threads, 'latent attention');
  for (let i = 0; i < tasks.length; ) {
    const t = tasks[i]!;
    const q0 = (t.seq * S * H + t.row) * C;
    if (!t.piece) {
      const from = (base + at[i * TASK_AT + 2]!) / 4;
      if (!outIn) a.out.set(heap.subarray(from, from + t.rows * C), q0);
      i++;
      continue;
    }
    // a block's pieces are consecutive in key order, the first from key 0
    let n = 1;
    while (i + n < tasks.length && tasks[i + n]!.piece && tasks[i + n]!.k0 > 0) n++;
    const states = new Int32Array(n);
    for (let j = 0; j < n; j++) states[j] = (base + at[(i + j) * TASK_AT + 3]!) / 8;
    mergePieces(f64, states, t.rows, C, a.out, q0);
    i += n;
  }
}

/**
 * out[o0 + ·] = f32(Σ acc_i · e^(m_i − M) · (1 / Σ l_i · e^(m_i − M))), M = max m_i, per row: the key
 * pieces' softmax states (f64 acc [rows, C], m [rows], l [rows] from each element index of `mem` in
 * `states`) merged in piece order. Every piece saw at least one key of every row (decode blocks only), so
 * each m_i is finite.
 */
function mergePieces(
  mem: Float64Array,
  states: Int32Array,
  rows: number,
  C: number,
  out: Float32Array,
  o0: number,
): void {
  const p = states.length;
  const w = new Float64Array(p);
  for (let r = 0; r < rows; r++) {
    const mAt = rows * C + r,
      lAt = mAt + rows;
    let M = -Infinity;
    for (let i = 0; i < p; i++) M = Math.max(M, mem[states[i]! + mAt]!);
    let l = 0;
    for (let i = 0; i < p; i++) {
      w[i] = Math.exp(mem[states[i]! + mAt]! - M);
      l += mem[states[i]! + lAt]! * w[i]!;
    }
    const inv = 1 / l;
    const o = r * C;
    if (p === 2) {
      // two pieces (the default): the general loop's sums, without its inner loop
      const a0 = states[0]!,
        a1 = states[1]!;
      const w0 = w[0]!,
        w1 = w[1]!;
      for (let c = o; c < o + C; c++) out[o0 + c] = (mem[a0 + c]! * w0 + mem[a1 + c]! * w1) * inv;
      continue;
    }
    for (let c = 0; c < C; c++) {
      let sum = 0;
      for (let i = 0; i < p; i++) sum += mem[states[i]! + o + c]! * w[i]!;
      out[o0 + o + c] = sum * inv;
    }
  }
}
