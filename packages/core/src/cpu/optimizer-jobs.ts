// The optimizer step as jobs of the GEMM engine's threads (the kernels: optimizer-rows-simd.ts): the
// gradients' sums of squares for global-norm clipping, and AdamW over every parameter at once, both
// split into tasks the calling thread and the workers share. Operands resident in the engine's memory
// are read and written in place; host gradients are copied into the engine's staging block first.
import type { AdamWKernelAttrs } from '../optim/adamw.js';
import { gemmConfig } from './gemm/config.js';
import { effectiveThreads, engineOwning, getEngine } from './gemm/runtime.js';
import type { WasmGemm } from './gemm/wasm-engine.js';
import { MAX_TASKS } from './gemm/worker-pool.js';
import { ADAMW_CONSTANTS } from './optimizer-rows-simd.js';

/** One parameter's operands: f32 weights and gradients, moments f32 or bf16 bits. */
export interface AdamWOperands {
  w: Float32Array;
  g: Float32Array;
  m: Float32Array | Uint16Array;
  v: Float32Array | Uint16Array;
}

/** Elements of one AdamW task (a range of one parameter; elements are independent, so any split is bitwise). */
const TASK_ELEMENTS = 32768;
/** Host gradient bytes staged per job at most (a larger step runs as several jobs). */
const ROUND_BYTES = 64 << 20;
/** The staging block's first bytes: AdamW's f64 constants (the sums-of-squares job writes its results after them). */
const CONSTS_BYTES = 128;

/** A host array a round copies into the staging block, at byte `at` past the block's head. */
interface Staged {
  src: Float32Array;
  at: number;
}

/** Tasks of one job and the host arrays they need staged (byte offsets from the block's data start). */
interface Round<T> {
  tasks: T[];
  staged: Staged[];
  bytes: number;
}

/** Splits `items` into rounds of at most MAX_TASKS tasks and ROUND_BYTES staged bytes. */
function rounds<T>(items: readonly T[], hostOf: (t: T) => Float32Array | null): Round<T>[] {
  const out: Round<T>[] = [];
  let r: Round<T> = { tasks: [], staged: [], bytes: 0 };
  for (const t of items) {
    const host = hostOf(t);
    const need = host ? host.byteLength : 0;
    if (r.tasks.length === MAX_TASKS || (r.tasks.length > 0 && r.bytes + need > ROUND_BYTES)) {
      out.push(r);
      r = { tasks: [], staged: [], bytes: 0 };
    }
    r.tasks.push(t);
    if (host) {
      r.staged.push({ src: host, at: r.bytes });
      r.bytes += need;
    }
  }
  if (r.tasks.length) out.push(r);
  return out;
}

/** Stages a round: returns the block's byte address (CONSTS_BYTES of head, then the staged arrays). */
function stageRound<T>(e: WasmGemm, r: Round<T>, head: number, what: string): number {
  const base = e.stage(CONSTS_BYTES + head + r.bytes, what);
  const heap = e.heap();
  for (const s of r.staged) heap.set(s.src, (base + CONSTS_BYTES + head + s.at) / 4);
  return base;
}

/** Groups `list` by the engine that holds key(item) (null: not resident in any). */
function byEngine<T>(list: readonly T[], key: (t: T) => WasmGemm | null): Map<WasmGemm | null, T[]> {
  const out = new Map<WasmGemm | null, T[]>();
  for (const t of list) {
    const e = key(t);
    const l = out.get(e);
    if (l) l.push(t);
    else out.set(e, [t]);
  }
  return out;
}

/**
 * AdamW on every entry whose w, m and v live in one engine's memory, as jobs of that engine's threads:
 * the update of adamw-simd.ts with each gradient read as f32(g · scale) (scale an f32 value; 1: none),
 * bitwise `g *= scale` followed by the update. w, m and v are overwritten; g is not. Returns the entries
 * it did not run (an operand outside the engines, no engine, gemmConfig.forceJs): the caller updates
 * those another way.
 */
export function adamwResident(list: readonly AdamWOperands[], a: AdamWKernelAttrs, scale: number): AdamWOperands[] {
  if (gemmConfig.forceJs || !getEngine()) return [...list];
  const home = (o: AdamWOperands): WasmGemm | null => {
    const e = engineOwning(o.w);
    return e && engineOwning(o.m) === e && engineOwning(o.v) === e ? e : null;
  };
  const groups = byEngine(list, home);
  for (const [e, entries] of groups) if (e) adamwJobs(e, entries, a, scale);
  return groups.get(null) ?? [];
}

interface AdamWTask {
  o: AdamWOperands;
  from: number;
  to: number;
  host: Float32Array | null;
}

function adamwJobs(e: WasmGemm, entries: readonly AdamWOperands[], a: AdamWKernelAttrs, scale: number): void {
  const tasks: AdamWTask[] = [];
  for (const o of entries) {
    const n = o.w.length;
    const hostG = engineOwning(o.g) === e ? null : o.g;
    for (let s = 0; s < n; s += TASK_ELEMENTS) {
      const t = Math.min(n, s + TASK_ELEMENTS);
      tasks.push({ o, from: s, to: t, host: hostG ? hostG.subarray(s, t) : null });
    }
  }
  const consts = { ...a, oneMinusB1: 1 - a.b1, oneMinusB2: 1 - a.b2, scale };
  for (const r of rounds(tasks, (t) => t.host)) {
    const base = stageRound(e, r, 0, `AdamW: ${r.tasks.length} tasks`);
    new Float64Array(e.heap().buffer, base, ADAMW_CONSTANTS.length).set(ADAMW_CONSTANTS.map((k) => consts[k]));
    let staged = 0;
    const args = r.tasks.map(({ o, from, to, host }) => {
      const bf16 = o.m instanceof Uint16Array;
      const mb = bf16 ? 2 : 4;
      let g = o.g.byteOffset + 4 * from;
      if (host) g = base + CONSTS_BYTES + r.staged[staged++]!.at;
      return [
        o.w.byteOffset + 4 * from,
        g,
        o.m.byteOffset + mb * from,
        o.v.byteOffset + mb * from,
        to - from,
        base,
        bf16 ? 1 : 0,
      ];
    });
    e.runRowKernelList('adamwRows', args, effectiveThreads(e));
  }
}

/**
 * Σ x² in f64 of each f32 array of `list` into out[i][0], one chain per array in element order (bitwise
 * sumOfSquares), the arrays shared between the engines' threads as tasks; resident arrays are read in
 * place, host ones staged. Returns the indices it did not do (no engine or gemmConfig.forceJs; a host
 * array past ROUND_BYTES):
 * the caller sums those.
 */
export function sumSquaresResident(list: readonly Float32Array[], out: readonly Float64Array[]): number[] {
  const main = gemmConfig.forceJs ? null : getEngine();
  if (!main) return [...list.keys()];
  const left: number[] = [];
  const at = list.flatMap((x, i) => {
    if (engineOwning(x) === null && x.byteLength > ROUND_BYTES) {
      left.push(i);
      return [];
    }
    return [i];
  });
  for (const [e, items] of byEngine(at, (i) => engineOwning(list[i]!) ?? main)) {
    const engine = e!;
    const hostOf = (i: number) => (engineOwning(list[i]!) === engine ? null : list[i]!);
    for (const r of rounds(items, hostOf)) {
      const head = 8 * r.tasks.length;
      const base = stageRound(engine, r, head, `sum of squares: ${r.tasks.length} arrays`);
      let staged = 0;
      const args = r.tasks.map((i, t) => {
        const x = list[i]!;
        const from = hostOf(i) ? base + CONSTS_BYTES + head + r.staged[staged++]!.at : x.byteOffset;
        return [from, x.length, base + CONSTS_BYTES + 8 * t];
      });
      engine.runRowKernelList('sumSquaresRow', args, effectiveThreads(engine));
      const sums = new Float64Array(engine.heap().buffer, base + CONSTS_BYTES, r.tasks.length);
      r.tasks.forEach((i, t) => {
        out[i]![0] = sums[t]!;
      });
    }
  }
  return left;
}
