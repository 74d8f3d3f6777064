// Causal attention for training (forward, and backward from the saved row log-sum-exps) on f32
// operands as one job of the GEMM engine: a task per (batch, head) pair (training-attention-task.ts),
// which the calling thread and the GEMM workers claim from one task table, so both threads run the
// gathers, products, exps and softmax passes. The calling thread stages the operands' batch rows into
// the engine's memory (one copy per array), writes the table, and copies the results out.
//
// Bits: every value is attention-kernels.ts's f32 arithmetic in the same order, except where a causal
// skip drops masked terms from a sum: a block of query rows [i0, i1) computes scores and dP only
// against keys [0, i1) (values not computed are masked; nothing changes), o = P·v and dq = dS·k sum keys
// [0, i1) instead of [0, S) (the dropped terms are exact zeros, +0 or −0: the sum can only differ in the sign of an
// exact zero, and an Infinity or NaN at a masked position no longer reaches it), and dv = Pᵀ·dO, dk = dSᵀ·q sum query rows from the key block's first row (a
// multiple of the GEMM's depth block, so the per-block partial sums are the whole product's; the skipped
// blocks are all zeros). The exps, the rows' maxima, sums and the dS pass run over j <= i only, as there.
import { align, ScratchLayout } from './arena.js';
import { gemmConfig } from './config.js';
import { effectiveThreads, getEngine } from './runtime.js';
import { DEFAULT_KERNEL } from './sgemm-kernel.js';
import { MAX_TASKS, TABLE, TASK_INTS, TASK_TRAINING_ATTENTION } from './worker-pool.js';

/**
 * One operand of the attention: per (batch, position, head) a row of `cols` floats starting at column
 * `offset` of `data`, laid out 'heads' [B, S, H, width], 'shared' [B, S, width] (every head reads the
 * same row) or 'headMajor' [B, H, S, width].
 */
export interface HeadOperand {
  data: Float32Array;
  layout: 'heads' | 'shared' | 'headMajor';
  width: number;
  offset: number;
}

export interface TrainingAttentionArgs {
  B: number;
  S: number;
  H: number;
  /** query / key width and value width */
  dq: number;
  dv: number;
  scale: number;
  /** queries (dq columns), keys' per-head part (dq − kShared's width), keys' shared part or null, values (dv) */
  q: HeadOperand;
  k: HeadOperand;
  kShared: HeadOperand | null;
  v: HeadOperand;
  /** (batch, head) pairs whose scratch may be held at once (the score budget; at least one) */
  maxPairs: number;
  /** q's last `width` columns rotated by these angles before the products (their gradient rotated back), or null */
  rotary: QueryRotation | null;
  /**
   * The keys' shared part is given unrotated and rotated by `rotary`'s angles (sign +1, as q's) as it is
   * gathered; the backward's dkShared is still the gradient with respect to the rotated rows.
   */
  rotateShared?: boolean;
}

/** A rotation of the queries' last `width` columns (rope-attention-kernels.ts's rotate). */
export interface QueryRotation {
  /** cos and sin [rows, S, width / 2]: rows 1 (every batch row) or B */
  cos: Float32Array;
  sin: Float32Array;
  rows: number;
  width: number;
  /** pairs (2i, 2i + 1) when true, else (i, i + width / 2) */
  interleave: boolean;
}

/** Where the backward writes: dq (dq columns), dk's per-head part, dk's shared part per head ('headMajor'), dv. */
export interface AttentionGradients {
  dq: HeadOperand;
  dk: HeadOperand;
  dkShared: HeadOperand | null;
  dv: HeadOperand;
}

/** Query rows per block of the causal skip (a multiple of the GEMM's 4-row micro-tile). */
const QUERY_ROWS = 32;
/** Header bytes: 64 Int32 words, the softmax scale (f64), 2 more words. */
const HEADER_BYTES = 272;

/** [floats between batch rows, between positions, between heads] of an operand. */
function strides(o: HeadOperand, S: number, H: number): [number, number, number] {
  if (o.layout === 'heads') return [S * H * o.width, H * o.width, o.width];
  if (o.layout === 'shared') return [S * o.width, o.width, 0];
  return [H * S * o.width, o.width, S * o.width];
}

function checkOperand(name: string, o: HeadOperand, cols: number, a: TrainingAttentionArgs): void {
  const { B, S, H } = a;
  const rows = o.layout === 'shared' ? B * S : B * S * H;
  if (!(o.data instanceof Float32Array))
    throw new TypeError(`trainingAttention: ${name} must be a Float32Array, got ${o.data}`);
  if (!(Number.isInteger(o.offset) && o.offset >= 0 && o.offset + cols <= o.width))
    throw new RangeError(
      `trainingAttention: ${name} reads columns [${o.offset}, ${o.offset + cols}) of rows ${o.width} wide`,
    );
  if (o.data.length < rows * o.width)
    throw new RangeError(
      `trainingAttention: ${name} needs ${rows} rows of ${o.width} floats (${rows * o.width}), got ${o.data.length}`,
    );
}

function check(a: TrainingAttentionArgs): number {
  const { B, S, H, dq, dv } = a;
  for (const [name, v] of Object.entries({ B, S, H, dq, dv }))
    if (!(Number.isInteger(v) && v >= 1))
      throw new RangeError(`trainingAttention: ${name} must be an integer >= 1, got ${v}`);
  if (H > MAX_TASKS) throw new RangeError(`trainingAttention: at most ${MAX_TASKS} heads, got ${H}`);
  const dr = a.kShared ? a.kShared.width : 0;
  if (a.kShared && (a.kShared.layout !== 'shared' || a.kShared.offset !== 0 || dr >= dq))
    throw new RangeError(
      `trainingAttention: the keys' shared part must be whole 'shared' rows narrower than dq (${dq})`,
    );
  checkOperand('q', a.q, dq, a);
  checkOperand('k', a.k, dq - dr, a);
  if (a.kShared) checkOperand('kShared', a.kShared, dr, a);
  checkOperand('v', a.v, dv, a);
  const r = a.rotary;
  if (a.rotateShared && !(a.kShared && r && r.width === dr))
    throw new RangeError(
      `trainingAttention: rotating the keys' shared part needs it and a query rotation of its width (${dr}), got ${r ? `width ${r.width}` : 'none'}`,
    );
  if (r) {
    const n = r.rows * S * (r.width / 2);
    if (!(r.width >= 2 && r.width % 2 === 0 && r.width <= dq && (r.rows === 1 || r.rows === B)))
      throw new RangeError(
        `trainingAttention: the queries' rotation needs an even width <= dq (${dq}) and 1 or B (${B}) rows of angles, got width ${r.width}, ${r.rows} rows`,
      );
    if (r.cos.length < n || r.sin.length < n)
      throw new RangeError(
        `trainingAttention: cos and sin need ${n} floats each, got ${r.cos.length} and ${r.sin.length}`,
      );
  }
  return dr;
}

const heads = (data: Float32Array, width: number): HeadOperand => ({ data, layout: 'heads', width, offset: 0 });

/** Whether the job can run (the wasm engine is there); without it callers keep their own loops. */
export function trainingAttentionRuns(): boolean {
  return !gemmConfig.forceJs && getEngine() !== null;
}

/**
 * o [B, S, H, dv] = softmax(scale · q·kᵀ, causal) · v and the rows' log-sum-exps lse [B, H, S], on the
 * GEMM engine's threads.
 */
export function trainingAttentionForward(a: TrainingAttentionArgs, o: Float32Array, lse: Float32Array): void {
  run(a, { o: heads(o, a.dv), lse }, null);
}

/**
 * The gradients of trainingAttentionForward's o with respect to q, k and v, from o, its lse and dO,
 * written through `g` (the columns the forward read; the others are kept).
 */
export function trainingAttentionBackward(
  a: TrainingAttentionArgs,
  O: Float32Array,
  lse: Float32Array,
  dO: Float32Array,
  g: AttentionGradients,
): void {
  run(a, { o: heads(O, a.dv), lse, dO: heads(dO, a.dv) }, g);
}

interface Saved {
  o: HeadOperand;
  lse: Float32Array;
  dO?: HeadOperand;
}

function run(a: TrainingAttentionArgs, io: Saved, g: AttentionGradients | null): void {
  const e = gemmConfig.forceJs ? null : getEngine();
  if (!e) throw new Error('trainingAttention: no wasm engine (check trainingAttentionRuns() first)');
  const dr = check(a);
  const { B, S, H, dq, dv } = a;
  checkOperand('o', io.o, dv, a);
  if (io.dO) checkOperand('dO', io.dO, dv, a);
  if (io.lse.length < B * H * S)
    throw new RangeError(`trainingAttention: lse needs ${B * H * S} floats ([B, H, S]), got ${io.lse.length}`);
  if (g) {
    checkOperand('dq', g.dq, dq, a);
    checkOperand('dk', g.dk, dq - dr, a);
    if (dr && !(g.dkShared?.layout === 'headMajor'))
      throw new RangeError(`trainingAttention: the keys' shared part needs a 'headMajor' dkShared output`);
    if (g.dkShared) checkOperand('dkShared', g.dkShared, dr, a);
    checkOperand('dv', g.dv, dv, a);
  }
  const threads = e.canThread() ? effectiveThreads(e) : 1;
  const pairs = Math.max(1, Math.min(MAX_TASKS, a.maxPairs));
  for (let u0 = 0; u0 < B * H; u0 += pairs) runChunk(a, io, g, dr, u0, Math.min(B * H, u0 + pairs), threads);
  e.endLargeStage();
}

/**
 * The forward's query rows of each (batch, head) pair cut into parts of about equal causal work (row i
 * costs ~i + 1 keys), at multiples of QUERY_ROWS, so that a job of few pairs (a prefill's heads) still
 * has ~8 tasks per thread and a late-waking worker leaves less of it to the caller; [0, S) when the pairs
 * alone are enough (a training step's batch x heads) or on one thread. Returns the boundaries.
 */
export function queryRanges(S: number, pairs: number, threads: number): number[] {
  const blocks = Math.ceil(S / QUERY_ROWS);
  const parts = threads > 1 ? Math.min(blocks, Math.floor(MAX_TASKS / pairs), Math.ceil((8 * threads) / pairs)) : 1;
  const bounds = [0];
  for (let k = 1; k < parts; k++) {
    const at = Math.round(Math.sqrt(k / parts) * blocks) * QUERY_ROWS;
    if (at > bounds[bounds.length - 1]! && at < S) bounds.push(at);
  }
  bounds.push(S);
  return bounds;
}

/** One task's scratch regions (byte offsets from its start) and their total. */
function taskLayout(S: number, dq: number, dv: number, back: boolean, shared: boolean, rotated: boolean) {
  const t = new ScratchLayout();
  const ld = align(S, 8),
    Sp = align(S, 4);
  const [ldq, ldv] = [align(dq, 8), align(dv, 8)];
  const regions = {
    q: rotated ? t.take(S * dq * 4) : 0,
    k: shared ? t.take(S * dq * 4) : 0,
    p: t.take((back ? Sp : Math.min(Sp, QUERY_ROWS)) * ld * 4),
    dP: back ? t.take(Sp * ld * 4) : 0,
    out1: t.take(Sp * (back ? ldq : ldv) * 4),
    dk: back ? t.take(Sp * ldq * 4) : 0,
    dv: back ? t.take(Sp * ldv * 4) : 0,
    stats: back ? 0 : t.take(QUERY_ROWS * 16),
    kPacked: t.take(ld * dq * 4),
    values: t.take((back ? ld : S) * dv * 4), // forward: v's rows at pitch dv; backward: vᵀ packed
    rowDot: back ? t.take(S * 4) : 0,
  };
  return { regions, bytes: t.bytes };
}

/**
 * Runs pairs [u0, u1) (pair u = b·H + h): stages the batch rows they touch, runs a task each, copies the
 * results out. A chunk that holds part of a batch row copies that row's outputs in first, so the heads
 * other chunks wrote are copied back out unchanged.
 */
function runChunk(
  a: TrainingAttentionArgs,
  io: Saved,
  g: AttentionGradients | null,
  dr: number,
  u0: number,
  u1: number,
  threads: number,
): void {
  const e = getEngine()!;
  const { S, H, dq, dv } = a;
  const back = g !== null;
  const b0 = Math.floor(u0 / H),
    nb = Math.floor((u1 - 1) / H) + 1 - b0;
  const wholeRows = u0 % H === 0 && u1 % H === 0;
  const scratch = new ScratchLayout();
  const { take } = scratch;
  // Each distinct array's batch rows once (k and v may be one array, and dk and dv); an array in the
  // engine's memory is read and written in place (at -1), as its staged copy would be.
  const staged = new Map<Float32Array, { at: number; from: number; count: number }>();
  const stage = (o: HeadOperand | null) => {
    if (!o || staged.has(o.data)) return;
    const per = strides(o, S, H)[0];
    const at = e.arena.owns(o.data) ? -1 : take(nb * per * 4);
    staged.set(o.data, { at, from: b0 * per, count: nb * per });
  };
  /** Byte address of operand o's first batch row in the job (b0's). */
  const addressOf = (o: HeadOperand): number => {
    const s = staged.get(o.data)!;
    return (s.at < 0 ? o.data.byteOffset + s.from * 4 : base + s.at) + o.offset * 4;
  };
  const inputs = back ? [a.q, a.k, a.kShared, a.v, io.o, io.dO ?? null] : [a.q, a.k, a.kShared, a.v];
  const outputs = back ? [g.dq, g.dk, g.dkShared, g.dv] : [io.o];
  for (const o of [...inputs, ...outputs]) stage(o);
  // An output array whose columns the tasks do not all write is copied in first (its other columns kept).
  const cols = new Map<Float32Array, number>();
  const widths = back ? [dq, dq - dr, dr, dv] : [dv];
  outputs.forEach((o, i) => o && cols.set(o.data, (cols.get(o.data) ?? 0) + widths[i]!));
  const partial = outputs.filter((o): o is HeadOperand => o !== null && (!wholeRows || cols.get(o.data)! < o.width));
  const lseAt = take(nb * H * S * 4);
  const hdrAt = take(HEADER_BYTES);
  const task = taskLayout(S, dq, dv, back, dr > 0, a.rotary !== null);
  const rot = a.rotary;
  const anglesAt = rot ? [take(rot.cos.length * 4), take(rot.sin.length * 4)] : [0, 0];
  const rows = back ? [0, S] : queryRanges(S, u1 - u0, threads);
  const parts = rows.length - 1;
  const tasks = (u1 - u0) * parts;
  // A task's scratch per thread, not per task (a thread runs one task at a time): at 512 tokens 2
  // threads' 2 MiB where 16 tasks' took 17.6 MiB.
  const workspaces = e.workspaces(threads);
  const spacesAt = take(workspaces.length * task.bytes);
  const tableAt = take(workspaces.length * 8);
  const base = e.stage(scratch.bytes, `training attention: ${tasks} (batch, head) pairs`);
  const heap = e.heap();
  for (const o of [...inputs, ...partial]) {
    if (!o) continue;
    const s = staged.get(o.data)!;
    if (s.at >= 0) heap.set(o.data.subarray(s.from, s.from + s.count), (base + s.at) / 4);
  }
  if (rot) [rot.cos, rot.sin].forEach((x, i) => heap.set(x, (base + anglesAt[i]!) / 4));
  const lse0 = b0 * H * S;
  if (back || !wholeRows) heap.set(io.lse.subarray(lse0, lse0 + nb * H * S), (base + lseAt) / 4);

  const spaces = new Int32Array(heap.buffer, base + tableAt, 2 * workspaces.length);
  workspaces.forEach((ws, i) => spaces.set([ws, base + spacesAt + i * task.bytes], 2 * i));
  const hdr = new Int32Array(heap.buffer, base + hdrAt, 68).fill(0);
  const r = task.regions;
  hdr.set([S, H, dq, dv, dq - dr, DEFAULT_KERNEL.kc, QUERY_ROWS, r.k, r.p, r.dP, r.out1, r.dk, r.dv]);
  hdr[16] = base + lseAt;
  if (rot) {
    hdr.set([rot.width, rot.interleave ? 1 : 0, rot.rows === 1 ? 0 : S * (rot.width / 2)], 13);
    hdr.set([base + anglesAt[0]!, base + anglesAt[1]!, b0], 17);
    hdr[60] = r.q;
  }
  hdr[61] = r.stats;
  hdr[62] = r.rowDot;
  hdr[63] = a.rotateShared ? 1 : 0;
  hdr.set([r.kPacked, r.values], 66);
  const operands = [a.q, a.k, a.kShared, a.v, io.o, io.dO ?? null, g?.dq, g?.dk, g?.dkShared, g?.dv];
  operands.forEach((o, i) => {
    if (!o) return;
    const [bs, ps, hs] = strides(o, S, H);
    hdr.set([addressOf(o), bs, ps, hs], 20 + 4 * i);
  });
  new Float64Array(heap.buffer, base + hdrAt + 256, 1)[0] = a.scale;

  const table = e.taskTable();
  for (let i = 0; i < tasks; i++) {
    const at = TABLE + i * TASK_INTS;
    const u = u0 + Math.floor(i / parts),
      part = i % parts;
    table.fill(0, at, at + TASK_INTS);
    table.set(
      [
        TASK_TRAINING_ATTENTION,
        back ? 1 : 0,
        Math.floor(u / H) - b0,
        u % H,
        base + hdrAt,
        base + tableAt,
        rows[part]!,
        rows[part + 1]!,
        workspaces.length,
      ],
      at,
    );
  }
  e.runTasks(tasks, threads, back ? 'training attention backward' : 'training attention');

  const out = e.heap();
  for (const o of outputs) {
    if (!o) continue;
    const s = staged.get(o.data)!;
    if (s.at >= 0) o.data.set(out.subarray((base + s.at) / 4, (base + s.at) / 4 + s.count), s.from);
  }
  if (!back) io.lse.set(out.subarray((base + lseAt) / 4, (base + lseAt) / 4 + nb * H * S), lse0);
}
