// The per-product records of a GEMV job (wasm-engine.ts's gemvMany), kept by the engine and reused from
// job to job: a decode step runs a few hundred small products, and fresh plan objects, argument arrays
// and staging lists per job were ~0.3 MiB of a step's ~1.6 MiB of garbage (docs/benchmarks.md, issue 13,
// seventeenth session). The products handed to a job are GemvRecords, made by one constructor: object
// literals and `{ ...literal }` clones of the same fields have different maps, and code optimized on one
// deoptimized (wrong map) when a request's prefill brought the other (docs/benchmarks.md, issue 13,
// nineteenth session).
import type { WeightKind } from './gemv-kernel.js';
import type { Gemv } from './wasm-engine.js';

/** The scales of a product without any (every record holds an array there, never undefined). */
export const NO_SCALES = new Float32Array(0);
const NO_ROWS = new Float32Array(0);

/**
 * A GEMV product, the one object shape the GEMV code reads. Pitches are numbers and scales an array
 * from the start, so no record's field changes representation later (a change gives the records a new
 * map and deoptimizes the code reading them).
 */
export class GemvRecord implements Gemv {
  m = 0;
  n = 0;
  k = 0;
  x: Float32Array = NO_ROWS;
  xOffset = 0;
  ldx = 0;
  w: Float32Array | Uint16Array | Uint8Array = NO_ROWS;
  wOffset = 0;
  kind: WeightKind = 'f32';
  scales: Float32Array = NO_SCALES;
  y: Float32Array = NO_ROWS;
  yOffset = 0;
  ldy = 0;

  /** Points the record back at nothing (so it keeps no caller array alive between jobs). */
  release(): void {
    this.x = NO_ROWS;
    this.w = NO_ROWS;
    this.y = NO_ROWS;
    this.scales = NO_SCALES;
  }
}

/** A Gemv holding nothing (what a plan points at between jobs). */
export const NO_GEMV: Gemv = new GemvRecord();

/** Task-table words of one GEMV (worker-pool.ts): weightCode x m ldx k w ldw n0 n1 y ldy s lds e. */
export const GEMV_ARGS = 14;

/** One product of a GEMV job: its staged operands' offsets in the job's scratch and its kernel arguments. */
export class GemvPlan {
  v: Gemv = NO_GEMV;
  /** weight bytes per element */
  eb = 0;
  /** FP8's exponent folded into the staged x (shared by products that share a staged x) */
  e = 0;
  /** scratch offsets (bytes): staged x, a weight that is not resident (-1: read in place), y (-1: written in place), scales (-1: read in place) */
  xAt = 0;
  wAt = 0;
  yAt = 0;
  sAt = 0;
  sCols = 0;
  /** whether this product stages its x (else it reads an earlier product's) */
  stagesX = false;
  /** the kernel's arguments, in task-table order (n0 and n1 rewritten per task) */
  readonly args: number[] = new Array<number>(GEMV_ARGS).fill(0);
}

/** The plans of the jobs one engine runs, grown to the largest job seen. */
export class GemvPlans {
  private readonly plans: GemvPlan[] = [];

  /** The i-th plan (made on first use). */
  at(i: number): GemvPlan {
    while (this.plans.length <= i) this.plans.push(new GemvPlan());
    return this.plans[i]!;
  }

  /** Drops the first `count` plans' references to their products (after a job). */
  release(count: number): void {
    for (let i = 0; i < count; i++) this.plans[i]!.v = NO_GEMV;
  }
}
