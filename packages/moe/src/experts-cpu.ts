// Inference on the CPU (no gradient): the routed experts of a token batch and the shared expert in two
// weight-product jobs — every gate and up projection in one, every down projection in the other —
// instead of a grouped GEMM, a SwiGLU and a combine op per projection with a kernel call (and, threaded,
// a hand-out to the workers) per expert. Each product, the SiLU·mul and the combine compute exactly
// what the general path computes (same kernels, same formulas, same order), so outputs are bitwise
// equal to it (tested); this only removes per-op and per-call overhead.
import {
  combineRowsResident,
  CpuStorage,
  expF32,
  F32WorkArrays,
  gatherRowsResident,
  isGradEnabled,
  MLP_WORK_BYTES,
  mulInto,
  siluInto,
  SwiGLU,
  swigluF32,
  takeF32,
  Tensor,
  weightProducts,
  type WeightOperand,
  type WeightProductArgs,
} from '@dsv3/core';
import type { DeviceDispatch } from './device-route';

/** The three projections of a SwiGLU expert as weight operands, or null when one is not a plain CPU weight. */
interface ExpertOperands {
  gate: WeightOperand;
  up: WeightOperand;
  down: WeightOperand;
  width: number;
}

function operandsOf(m: unknown): ExpertOperands | null {
  if (!(m instanceof SwiGLU) || m.forward !== SwiGLU.prototype.forward) return null;
  const gate = m.gateProj.cpuWeightOperand();
  const up = m.upProj.cpuWeightOperand();
  const down = m.downProj.cpuWeightOperand();
  return gate && up && down ? { gate, up, down, width: m.hidden } : null;
}

const host = (t: Tensor): Float32Array | Int32Array => (t.storage as CpuStorage).data as Float32Array | Int32Array;

export interface CpuExpertsInput {
  /** x [T, H] f32 on the CPU */
  x2: Tensor;
  plan: DeviceDispatch;
  /** [T, k] combine weights (f32) */
  weights: Tensor;
  experts: readonly unknown[];
  shared: unknown;
  /**
   * Whether the routed experts' SiLU·mul rounds silu to f32 before the multiply (their modules' own
   * forward: silu then mul) or not (the grouped path's fused swiglu kernel, in double).
   */
  asModules: boolean;
  /** The work a group of experts may hold (core's MLP_WORK_BYTES unless given: tests run small groups). */
  groupBytes?: number;
}

// A prefill's gathered rows and expert activations are megabytes per layer: in the GEMM engine's memory,
// where the weight GEMM reads and writes them in place (no staging copy in or out), and handed back at
// the end of each call (F32WorkArrays.release: the next op's blocks reuse them); a decode step's (one
// token) stay in host memory, kept. cpuExpertsInference is not re-entrant.
const hostWork = new F32WorkArrays();
const residentWork = new F32WorkArrays(true);

/**
 * G = silu(G) · U: the fused swiglu kernel's formula (core's swigluF32: e^-g from core's vectorized exp,
 * the rest in double; in place in the engine's memory for a prefill's resident rows), or, `rounded`,
 * silu rounded to f32 first like a module's silu-then-mul (core's silu and mul kernels). (A function of the
 * module, not a closure made per call: see docs/benchmarks.md, issue 13, eighth session.)
 */
function swiglu(G: Float32Array, U: Float32Array, rounded: boolean): void {
  if (!rounded) {
    if (swigluF32(G, U, G)) return;
    const e = hostWork.take(7, G.length);
    expF32(G, 0, e, 0, G.length, -1);
    for (let i = 0; i < G.length; i++) G[i] = (G[i]! / (1 + e[i]!)) * U[i]!;
    return;
  }
  siluInto(G, G); // core's f32 silu op, then the product, as the module computes them
  mulInto(G, U); // the loop's f32 products, on the engine's threads for a prefill's resident rows
}

// A decode step's token order (host memory; a prefill's lives in residentWork's slots 8-10).
let hostOrder = new Int32Array(0);
let hostStarts = new Int32Array(0);

/** An i32 view over the same bytes as a work array. */
const asInt32 = (a: Float32Array) => new Int32Array(a.buffer, a.byteOffset, a.length);

/**
 * Each token's dispatch rows in ascending order (a counting sort): token t's are order[starts[t] ..
 * starts[t + 1]), starts of T + 1 entries.
 */
export function sortByToken(rows: Int32Array, T: number, order: Int32Array, starts: Int32Array): void {
  const N = rows.length;
  starts.fill(0, 0, T + 1);
  for (let r = 0; r < N; r++) starts[rows[r]! + 1]!++;
  for (let t = 0; t < T; t++) starts[t + 1]! += starts[t]!;
  for (let r = 0; r < N; r++) order[starts[rows[r]!]!++] = r; // ascending r per token
  for (let t = T; t > 0; t--) starts[t] = starts[t - 1]!;
  starts[0] = 0;
}

/**
 * xs[r] = x[rows[r]] (rows of H): on the engine's threads in place when x lives in the engine's memory
 * (a prefill's normed hidden states, a kernel output), else copied here.
 */
function gather(xs: Float32Array, x: Float32Array, rows: Int32Array, H: number): void {
  const rowsR = asInt32(residentWork.take(12, rows.length));
  rowsR.set(rows);
  if (gatherRowsResident(xs, x, rowsR, H)) return;
  for (let r = 0; r < rows.length; r++) xs.set(x.subarray(rows[r]! * H, (rows[r]! + 1) * H), r * H);
}

/**
 * out[t] (+)= Σ w · hOut[r] over token t's rows r of a group of experts (dispatch rows r0 + r) in dispatch
 * order, then + sOut[t]: the weighted scatter-add's sums (each step f32(acc + w·h), from +0 — or,
 * `accumulate`, from out[t] as the previous groups left it, so the groups' sums are the whole's) token by
 * token, so a token's output row stays in cache across its additions instead of being revisited across
 * the whole output. A prefill's (resident hOut and sOut) run on core's SIMD kernel in the engine's
 * memory, the same sums.
 */
function combine(
  out: Float32Array,
  hOut: Float32Array,
  sOut: Float32Array | null,
  rows: Int32Array,
  r0: number,
  perm: Int32Array,
  w: Float32Array,
  H: number,
  accumulate: boolean,
): void {
  const N = rows.length;
  const T = out.length / H;
  if (T > 1) {
    const order = asInt32(residentWork.take(8, N)),
      starts = asInt32(residentWork.take(9, T + 1)),
      wt = residentWork.take(10, N);
    sortByToken(rows, T, order, starts);
    for (let i = 0; i < N; i++) wt[i] = w[perm[r0 + order[i]!]!]!;
    if (combineRowsResident(out, hOut, sOut, order, starts, wt, H, accumulate)) return;
  }
  if (hostStarts.length < T + 1) hostStarts = new Int32Array(T + 1);
  if (hostOrder.length < N) hostOrder = new Int32Array(N);
  sortByToken(rows, T, hostOrder, hostStarts);
  if (!accumulate) out.fill(0); // the sums start from +0 (a reused output holds stale values)
  for (let t = 0; t < T; t++) {
    const o = t * H;
    for (let i = hostStarts[t]!, end = hostStarts[t + 1]!; i < end; i++) {
      const r = hostOrder[i]!;
      const s = r * H,
        wr = w[perm[r0 + r]!]!;
      for (let j = 0; j < H; j++) out[o + j] = out[o + j]! + wr * hOut[s + j]!;
    }
    if (sOut) for (let j = o; j < o + H; j++) out[j] = out[j]! + sOut[j]!;
  }
}

// A prefill's routed experts hold their work — gathered rows (which the down projections' outputs then
// overwrite), gate and up activations: 4 · rows · (H + 2 · width) bytes — within core's MLP_WORK_BYTES:
// past it they run in groups (consecutive in expert order, each expert whole), each group's products,
// SiLU·mul and combine before the next's. Every product is the one the whole batch would run (same rows,
// same kernel) and the combine's sums continue from group to group, so the output bits do not depend on
// the grouping; the memory does: at DeepSeek-V3's shapes (H 7168, 8 experts a token) a 512-token
// prefill's experts would otherwise hold 4096 rows · 44 KiB = 176 MiB at once. (V3-mini's: 18 MiB in
// five groups, the prefill within ~2%; docs/benchmarks-sessions.md, twenty-eighth session.)

// The products of a group's two weight-product jobs: records reused from call to call (one object
// shape, no per-expert objects; cpuExpertsInference is not re-entrant), listed in the jobs it passes;
// the active experts (those with tokens), their operands, and where each group of them ends.
const records: WeightProductArgs[] = [];
const firstJob: WeightProductArgs[] = [];
const secondJob: WeightProductArgs[] = [];
const activeOps: (ExpertOperands | null)[] = [];
const activeExperts: number[] = [];
const activeRows: number[] = [];
const activeWidths: number[] = [];
const groupEnds: number[] = [];

/**
 * Cuts experts 0..count-1 — expert i with rows[i] rows of H floats and activations widths[i] wide — into
 * groups of consecutive experts whose work (4 · Σ rows · (H + 2 · width) bytes) stays within `budget`, an
 * expert over it alone in its group; writes each group's end (exclusive) to `ends` and returns how many
 * (at least one: no experts, one empty group).
 */
export function expertGroups(
  rows: ArrayLike<number>,
  widths: ArrayLike<number>,
  count: number,
  H: number,
  budget: number,
  ends: number[],
): number {
  let groups = 0,
    bytes = 0;
  for (let i = 0; i < count; i++) {
    const b = 4 * rows[i]! * (H + 2 * widths[i]!);
    if (bytes > 0 && bytes + b > budget) {
      ends[groups++] = i;
      bytes = 0;
    }
    bytes += b;
  }
  ends[groups++] = count;
  return groups;
}

const NO_ROWS = new Float32Array(0);

/** Appends record i of `records`, set to y[m, n] = x[m, k] · Wᵀ, to `job`. */
function addProduct(
  job: WeightProductArgs[],
  i: number,
  m: number,
  n: number,
  k: number,
  x: Float32Array,
  op: WeightOperand,
  y: Float32Array,
): void {
  const r = records[i] ?? (records[i] = { m: 0, n: 0, k: 0, x: NO_ROWS, w: NO_ROWS, scales: undefined, y: NO_ROWS });
  r.m = m;
  r.n = n;
  r.k = k;
  r.x = x;
  r.w = op.w;
  r.scales = op.scales;
  r.y = y;
  job.push(r);
}

/** The records drop the arrays they were given (work arrays' views, weights), the jobs their records. */
function releaseProducts(used: number): void {
  for (let i = 0; i < used; i++) {
    const r = records[i]!;
    r.x = NO_ROWS;
    r.w = NO_ROWS;
    r.scales = undefined;
    r.y = NO_ROWS;
  }
  firstJob.length = 0;
  secondJob.length = 0;
}

/**
 * Σ_j w[t, j] · Expert_{e[t, j]}(x[t]) + Shared(x[t]) for every token t, or null when this path does not
 * apply (gradient recording on, not the CPU or not f32, an expert that is not a plain SwiGLU over CPU
 * weights) and the caller runs the general one.
 */
export function cpuExpertsInference({
  x2,
  plan,
  weights,
  experts,
  shared,
  asModules,
  groupBytes = MLP_WORK_BYTES,
}: CpuExpertsInput): Tensor | null {
  if (isGradEnabled() || x2.backend.name !== 'cpu' || x2.dtype !== 'f32' || weights.dtype !== 'f32') return null;
  const [T, H] = x2.shape as [number, number];
  const offsets = host(plan.offsets) as Int32Array;
  const rows = host(plan.rows) as Int32Array;
  const perm = host(plan.permutation) as Int32Array;
  const w = host(weights) as Float32Array;
  const x = host(x2) as Float32Array;
  const E = offsets.length - 1;
  const N = offsets[E]!;
  // Operands of the experts that have tokens (and the shared expert); any other module: general path.
  let nActive = 0;
  for (let e = 0; e < E; e++) {
    if (offsets[e + 1]! === offsets[e]!) continue;
    const op = operandsOf(experts[e]);
    if (!op) {
      activeOps.fill(null, 0, nActive);
      return null;
    }
    activeExperts[nActive] = e;
    activeRows[nActive] = offsets[e + 1]! - offsets[e]!;
    activeWidths[nActive] = op.width;
    activeOps[nActive++] = op;
  }
  const sh = shared === null ? null : operandsOf(shared);
  if (shared !== null && !sh) return null;

  // The groups (one for a decode step's token): group j is active experts [groupEnds[j - 1], groupEnds[j]).
  const groups = expertGroups(activeRows, activeWidths, nActive, H, T === 1 ? Infinity : groupBytes, groupEnds);
  let mostRows = 0,
    mostWidth = 0;
  for (let j = 0, i = 0; j < groups; j++) {
    let inRows = 0,
      inWidth = 0;
    for (; i < groupEnds[j]!; i++) {
      inRows += activeRows[i]!;
      inWidth += activeRows[i]! * activeWidths[i]!;
    }
    mostRows = Math.max(mostRows, inRows);
    mostWidth = Math.max(mostWidth, inWidth);
  }

  // A group's token rows in dispatch order (the grouped path's gather), which its down projections'
  // outputs then take the place of (read only by the gate / up job): a 512-token prefill's 12 MB less to
  // touch. One token (decode at batch 1): every expert reads x itself, so the weight-product job stages
  // it once for all of them (with FP8, one staging exponent) instead of once per routed expert's copy of
  // the row, and the outputs get a slot of their own.
  const kept = T === 1 ? hostWork : residentWork;
  const xs = T === 1 ? x : kept.take(0, mostRows * H);
  const g = kept.take(1, mostWidth),
    u = kept.take(2, mostWidth),
    hOut = T === 1 ? kept.take(3, N * H) : xs;
  const shW = sh?.width ?? 0;
  const sg = kept.take(4, T * shW),
    su = kept.take(5, T * shW),
    sOut = kept.take(6, T * H);
  // a kernel output (in the engine's memory while the budget allows): the residual add reads it in place
  const out = takeF32(T * H);
  try {
    for (let j = 0, i = 0; j < groups; j++) {
      const r0 = i < nActive ? offsets[activeExperts[i]!]! : N;
      const r1 = j + 1 < groups ? offsets[activeExperts[groupEnds[j]!]!]! : N;
      if (T !== 1) gather(xs.subarray(0, (r1 - r0) * H), x, rows.subarray(r0, r1), H);
      // expert i's gate and up are the first job's products, its down the second's; the shared expert's
      // (in the first group) last
      let used = 0,
        at = 0;
      for (; i < groupEnds[j]!; i++) {
        const e = activeExperts[i]!;
        const c = activeRows[i]!,
          rowsAt = (offsets[e]! - r0) * H;
        const op = activeOps[i]!;
        const n = op.width;
        const xa = T === 1 ? x : xs.subarray(rowsAt, rowsAt + c * H);
        const ga = g.subarray(at, at + c * n);
        addProduct(firstJob, used++, c, n, H, xa, op.gate, ga);
        addProduct(firstJob, used++, c, n, H, xa, op.up, u.subarray(at, at + c * n));
        addProduct(secondJob, used++, c, H, n, ga, op.down, hOut.subarray(rowsAt, rowsAt + c * H));
        at += c * n;
      }
      if (sh && j === 0) {
        addProduct(firstJob, used++, T, shW, H, x, sh.gate, sg);
        addProduct(firstJob, used++, T, shW, H, x, sh.up, su);
        addProduct(secondJob, used++, T, H, shW, sg, sh.down, sOut);
      }
      try {
        weightProducts(firstJob);
        swiglu(g.subarray(0, at), u.subarray(0, at), asModules);
        if (j === 0) swiglu(sg, su, true);
        weightProducts(secondJob);
      } finally {
        releaseProducts(used);
      }
      const last = j + 1 === groups;
      combine(out, hOut, sh && last ? sOut : null, rows.subarray(r0, r1), r0, perm, w, H, j > 0);
    }
  } finally {
    activeOps.fill(null, 0, nActive);
  }
  residentWork.release();
  return new Tensor(x2.backend, new CpuStorage(out), [T, H], 'f32');
}
