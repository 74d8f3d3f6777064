// The screened greedy head: the argmax of x · Wᵀ over a bf16 LM head without reading every row at two
// bytes a weight. A decode step's head is most of its bytes (V3-mini: 129,280 x 1,024 bf16, 265 MB, half
// an FP8 step), and greedy decoding reads one number from it: its argmax.
//
// Once per head, each row is quantized to 8 bits (w~ = q sw, q in [-127, 127]) into native/head-screen.cc's
// packed blocks, with two bound terms a_r = ||w_r - w~_r|| + m_k ||w_r|| and b_r = ||w~_r||. Each step,
// x is quantized to 8 bits per 128 elements (x~), the screen computes y~_r = x~ · w~_r from integer dot
// products (one byte a weight), and
//     |x · w_r - y~_r| <= ||x|| ||w_r - w~_r|| + ||x - x~|| ||w~_r|| <= ||x|| a_r + ||x - x~|| b_r = bound_r
// (Cauchy-Schwarz; the m_k ||x|| ||w_r|| term, m_k = max(2^-12, k 2^-23), covers the f32 roundings of both
// the full product's kernel, at most k 2^-24 ||x|| ||w_r|| in any summation order, and the screen's). With lo = max_r (y~_r - bound_r), a row whose
// y~_r + bound_r < lo has a logit below lo, which the row attaining lo reaches: it cannot be the argmax, nor
// tie it. The rows left (a handful to a few hundred on V3-mini) get their logits from the same bf16 GEMV
// as the full product, so their bits, and the first largest among them is the full product's argmax.
import { firstMaxIndexF32 } from '../argmax-simd.js';
import { align } from './arena.js';
import { gemmConfig } from './config.js';
import { TABLE, TASK_HEAD_SCREEN, TASK_INTS } from './worker-pool.js';
import type { WasmGemm } from './wasm-engine.js';

const ROWS = 16; // native/head-screen.cc's packed block
const KBLOCK = 128; // activations sharing one scale
/** Rows the exact pass takes at most; past it the full product is no slower (and x is an outlier). */
const MOST_CANDIDATES = 4096;

const upF32 = new Float32Array(1),
  upBits = new Uint32Array(upF32.buffer);

/** Rounds up to a float (a bound must never shrink in f32). */
function f32Up(v: number): number {
  const f = Math.fround(v);
  if (f >= v) return f;
  upF32[0] = f;
  upBits[0] = f > 0 ? upBits[0]! + 1 : f < 0 ? upBits[0]! - 1 : 1;
  return upF32[0]!;
}

/** A closure over the engine and the block alone (see HeadScreen.releaser). */
function releaseOf(engine: WasmGemm, at: number): () => void {
  return () => engine.arena.release(at);
}

/** One bf16 head [n, k] screened on one engine: its packed rows and a step's working memory there. */
export class HeadScreen {
  private readonly blocks: number;
  private readonly at: number;
  private readonly packedAt: number;
  private readonly swAt: number;
  private readonly aAt: number;
  private readonly bAt: number;
  private readonly yAt: number;
  private readonly xqAt: number;
  private readonly sxAt: number;
  private readonly xsumAt: number;
  private readonly paramsAt: number;
  private readonly outAt: number;
  private readonly xq: Int8Array;
  private readonly sx: Float32Array;
  private readonly xsum: Int32Array;
  private readonly params: Float32Array;
  private readonly out: Int32Array;
  /** the exact pass's rows, gathered (grown as needed) */
  private gathered = new Uint16Array(0);
  /** whether every row packed finite (else screening is off for this head) */
  readonly usable: boolean;
  /** rows the last screen left for the exact pass (diagnostics, tests); -1 before any */
  lastCandidates = -1;

  private constructor(
    private readonly engine: WasmGemm,
    private readonly w: Uint16Array,
    readonly n: number,
    readonly k: number,
    at: number,
    threads: number,
  ) {
    this.blocks = Math.ceil(n / ROWS);
    const padded = this.blocks * ROWS,
      kb = k / KBLOCK;
    const { packed, sw, a, b, y, xq, sx, xsum, params, out } = HeadScreen.layout(n, k);
    this.at = at;
    this.packedAt = at + packed;
    this.swAt = at + sw;
    this.aAt = at + a;
    this.bAt = at + b;
    this.yAt = at + y;
    this.xqAt = at + xq;
    this.sxAt = at + sx;
    this.xsumAt = at + xsum;
    this.paramsAt = at + params;
    this.outAt = at + out;
    const buf = engine.arena.buffer();
    this.xq = new Int8Array(buf, this.xqAt, k);
    this.sx = new Float32Array(buf, this.sxAt, kb);
    this.xsum = new Int32Array(buf, this.xsumAt, kb);
    this.params = new Float32Array(buf, this.paramsAt, 2);
    this.out = new Int32Array(buf, this.outAt, MOST_CANDIDATES);
    this.pack(threads);
    const bounds = new Float32Array(buf, this.aAt, padded);
    const boundsQ = new Float32Array(buf, this.bAt, padded);
    let finite = true;
    for (let r = 0; r < n && finite; r++) finite = Number.isFinite(bounds[r]!) && Number.isFinite(boundsQ[r]!);
    this.usable = finite;
  }

  /** Where each region lies from the allocation's start, and its bytes in all. */
  private static layout(n: number, k: number) {
    const padded = Math.ceil(n / ROWS) * ROWS,
      kb = k / KBLOCK;
    let bytes = 0;
    const take = (size: number): number => {
      const o = bytes;
      bytes += align(size);
      return o;
    };
    return {
      packed: take(padded * k),
      sw: take(padded * 4),
      a: take(padded * 4),
      b: take(padded * 4),
      y: take(padded * 4),
      xq: take(k),
      sx: take(kb * 4),
      xsum: take(kb * 4),
      params: take(8),
      out: take(MOST_CANDIDATES * 4),
      bytes,
    };
  }

  /**
   * The screen of bf16 head `w` ([n, k], in `engine`'s memory), packed now (over `threads` threads); null
   * where it cannot run there (no native kernels, k not a multiple of 128, no room, a row not finite).
   */
  static create(engine: WasmGemm, w: Uint16Array, n: number, k: number, threads: number): HeadScreen | null {
    if (!engine.nativeBound || k % KBLOCK !== 0 || n === 0 || !engine.arena.owns(w) || w.length < n * k) return null;
    const at = engine.arena.alloc(HeadScreen.layout(n, k).bytes, gemmConfig.residentHeadroom, false);
    if (at === null) return null;
    const s = new HeadScreen(engine, w, n, k, at, threads);
    if (s.usable) return s;
    s.dispose();
    return null;
  }

  /** Returns the packed rows' memory to the engine. */
  dispose(): void {
    this.engine.arena.release(this.at);
  }

  /**
   * What returns this screen's memory, holding neither the screen nor its head (a FinalizationRegistry's
   * held value that reached the head would keep it alive for ever).
   */
  releaser(): () => void {
    return releaseOf(this.engine, this.at);
  }

  private pack(threads: number): void {
    const tasks = Math.min(this.blocks, Math.max(1, threads * 4));
    this.runJob('pack', tasks, threads, (i, f, o) => {
      const r0 = Math.floor((i * this.blocks) / tasks) * ROWS,
        r1 = Math.floor(((i + 1) * this.blocks) / tasks) * ROWS;
      f.set([this.w.byteOffset, this.n, this.k, this.packedAt, this.swAt, this.aAt, this.bAt, r0, r1], o);
    });
  }

  /**
   * Writes `tasks` tasks of native/head-screen.cc's `kernel` (their arguments from `fill`, then the
   * memory's pages) and runs them as one job.
   */
  private runJob(
    kernel: 'pack' | 'screen',
    tasks: number,
    threads: number,
    fill: (task: number, table: Int32Array, at: number) => void,
  ): void {
    const table = this.engine.taskTable(),
      pages = this.engine.memoryPages();
    const args = kernel === 'pack' ? 9 : 10;
    for (let i = 0; i < tasks; i++) {
      const o = TABLE + i * TASK_INTS;
      table.fill(0, o, o + TASK_INTS);
      table[o] = TASK_HEAD_SCREEN;
      table[o + 1] = kernel === 'pack' ? 0 : 1;
      fill(i, table, o + 2);
      table[o + 2 + args] = pages;
    }
    this.engine.runTasks(tasks, threads, `head screen ${kernel}`);
  }

  /**
   * The first index of the largest of x · Wᵀ (x: k floats from `xOffset`), as firstMaxIndexF32 over the
   * full product's row would return it; `product(rows, count, y)` is the full product's y = x · rowsᵀ for
   * `count` rows of W gathered. Null where the screen does not apply to this x (a value not finite,
   * or too many rows left to check), for the caller to run the full product.
   */
  argmax(
    x: Float32Array,
    xOffset: number,
    threads: number,
    product: (rows: Uint16Array, count: number, y: Float32Array) => void,
  ): number | null {
    if (!this.screen(x, xOffset, threads)) return null;
    const count = this.engine.nativeBound!.headCandidates(
      this.yAt,
      this.aAt,
      this.bAt,
      this.n,
      this.paramsAt,
      this.outAt,
      MOST_CANDIDATES,
      this.engine.memoryPages(),
    );
    this.lastCandidates = count;
    if (count === 0 || count > MOST_CANDIDATES) return null;
    return this.exactArgmax(count, product);
  }

  /**
   * Quantizes x (k floats from `xOffset`) and runs the screen: the approximate logits at yAt, the bound's
   * factors ||x||, ||x - x~|| (rounded up) at paramsAt; false when x is not finite.
   */
  private screen(x: Float32Array, xOffset: number, threads: number): boolean {
    const { k } = this;
    const kb = k / KBLOCK;
    let nx = 0,
      ndx = 0;
    for (let b = 0; b < kb; b++) {
      const o = xOffset + b * KBLOCK;
      let amax = 0;
      for (let i = 0; i < KBLOCK; i++) amax = Math.max(amax, Math.abs(x[o + i]!));
      if (!Number.isFinite(amax)) return false;
      const s = Math.fround(amax / 127);
      let sum = 0;
      for (let i = 0; i < KBLOCK; i++) {
        const v = x[o + i]!;
        const q = s > 0 ? Math.max(-127, Math.min(127, Math.round(v / s))) : 0;
        this.xq[b * KBLOCK + i] = q;
        sum += q;
        const d = v - q * s;
        nx += v * v;
        ndx += d * d;
      }
      this.sx[b] = s;
      this.xsum[b] = sum;
    }
    // the bound is evaluated in f32 (two products and a sum): the 2^-20 covers its roundings
    this.params[0] = f32Up(Math.sqrt(nx) * (1 + 2 ** -20));
    this.params[1] = f32Up(Math.sqrt(ndx) * (1 + 2 ** -20));
    if (!Number.isFinite(this.params[0]!)) return false;
    const tasks = Math.min(this.blocks, Math.max(1, threads * 4));
    const widen = gemmConfig.headScreenWiden ? 1 : 0;
    this.runJob('screen', tasks, threads, (i, f, o) => {
      const rb0 = Math.floor((i * this.blocks) / tasks),
        rb1 = Math.floor(((i + 1) * this.blocks) / tasks);
      f.set([this.packedAt, k, this.xqAt, this.sxAt, this.xsumAt, this.swAt, this.yAt, rb0, rb1, widen], o);
    });
    return true;
  }

  /**
   * Test and diagnostics hook: the screen's approximate logits of x and their bounds (f32, as
   * headCandidates computes them: |x · w_r - approx_r| <= bound_r for every row r < n), with the bound's
   * two terms, ||x|| a_r (the weights' rounding) and ||x - x~|| b_r (x's); null for an x not finite.
   */
  approximations(
    x: Float32Array,
    threads: number,
  ): { approx: Float32Array; bound: Float32Array; weightTerm: Float32Array; xTerm: Float32Array } | null {
    if (!this.screen(x, 0, threads)) return null;
    const buf = this.engine.arena.buffer(),
      n = this.n;
    const approx = new Float32Array(buf, this.yAt, n).slice();
    const a = new Float32Array(buf, this.aAt, n),
      b = new Float32Array(buf, this.bAt, n);
    const [nx, ndx] = this.params as unknown as [number, number];
    const weightTerm = Float32Array.from(a, (ar) => nx * ar);
    const xTerm = Float32Array.from(b, (br) => ndx * br);
    const bound = weightTerm.map((t, r) => t + xTerm[r]!);
    return { approx, bound, weightTerm, xTerm };
  }

  /** The candidates' logits by the full product's kernel (`product`, on their rows gathered), and the first largest. */
  private exactArgmax(
    count: number,
    product: (rows: Uint16Array, count: number, y: Float32Array) => void,
  ): number | null {
    const { k, w, out } = this;
    if (this.gathered.length < count * k) this.gathered = new Uint16Array(Math.max(count, 64) * k);
    const rows = this.gathered.subarray(0, count * k);
    for (let c = 0; c < count; c++) rows.set(w.subarray(out[c]! * k, (out[c]! + 1) * k), c * k);
    const logits = new Float32Array(count);
    product(rows, count, logits);
    // the candidates are in row order, so the first of equals among them is the full row's
    const best = firstMaxIndexF32(logits, 0, count);
    return best < 0 || !Number.isFinite(logits[best]!) ? null : out[best]!;
  }
}
