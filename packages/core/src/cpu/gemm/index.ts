// CPU f32 GEMM for @dsv3/core: WebAssembly SIMD128 kernel generated at run time, spread over Node
// worker threads when available; pure-JS blocked kernel where SIMD128 is missing. Small-M products
// against Linear weights take a GEMV kernel that reads f32 or bf16 weights where they are resident.
import type { DType, StorageArray } from '../../dtype.js';
import { bytesPerElement, decodeBf16 } from '../../dtype.js';
import { type Gemm, normalizeGemm, type GemmArgs, storedSpans } from './args.js';
import { HUGE_PAGE, OS_PAGE } from './arena.js';
import { gemmConfig } from './config.js';
import { dequantizeFp8Weight } from './fp8-weight.js';
import { DeferredProducts } from './deferred-products.js';
import { gemmMany } from './gemm-many.js';
import { anyDeferred, deferralOpen, markDeferred, settleDeferred } from '../../deferred.js';
import { sgemmJs } from './js-kernel.js';
import { GemvRecord, NO_SCALES } from './gemv-plans.js';
import { HeadScreen } from './head-screen.js';
import { firstMaxIndexF32 } from '../argmax-simd.js';
import type { Gemv, WasmGemm } from './wasm-engine.js';
import { addEngine, createdEngine, effectiveThreads, engineOwning, engines, getEngine, sameMemory } from './runtime.js';

export type { GemmArgs } from './args.js';
export { dequantizeFp8Weight } from './fp8-weight.js';
export { mapFileInto, prefaultMapped, quantizeE4M3TilesNative, trimNativeHeap } from './native-kernels.js';

function traceProduct(
  entry: 'sgemm' | 'weightProduct',
  m: number,
  n: number,
  k: number,
  transA: boolean,
  transB: boolean,
  batch: number,
  a: ArrayBufferView,
  b: ArrayBufferView,
  c: ArrayBufferView,
): void {
  const resident = { a: isResident(a), b: isResident(b), c: isResident(c) };
  gemmConfig.trace?.({ entry, m, n, k, transA, transB, batch, resident });
}

/** C = op(A) @ op(B) (optionally batched), synchronously. */
export function sgemm(args: GemmArgs): void {
  const g = normalizeGemm(args);
  if (gemmConfig.trace) traceProduct('sgemm', g.m, g.n, g.k, g.transA, g.transB, g.batch, g.a, g.b, g.c);
  runGemm(g);
}

/**
 * Several independent products, each C = op(A) @ op(B) as sgemm computes it (bitwise), run as one job
 * of the engine's threads: one staging pass and one hand-out to the workers for the whole list (an MoE
 * layer's per-expert products), each product on one thread unless there are fewer products than threads
 * to keep busy. No product may read another's output (they run at once, not in list order).
 */
export function sgemmMany(list: readonly GemmArgs[]): void {
  const gs = list.map(normalizeGemm);
  checkIndependent(gs);
  if (gemmConfig.trace)
    for (const g of gs) traceProduct('sgemm', g.m, g.n, g.k, g.transA, g.transB, g.batch, g.a, g.b, g.c);
  if (gemmConfig.forceJs || !getEngine()) {
    for (const g of gs) sgemmJs(g);
    return;
  }
  // Grouped by the engine each product's single call would take (resident operands are read in place).
  const jobs = new Map<WasmGemm, Gemm[]>();
  for (const g of gs) {
    const e = (engineOwning(g.b) ?? engineOwning(g.a) ?? getEngine())!;
    const job = jobs.get(e);
    if (job) job.push(g);
    else jobs.set(e, [g]);
  }
  for (const [e, job] of jobs) gemmMany(e, job, effectiveThreads(e));
}

const deferredOf = new Map<WasmGemm, DeferredProducts>();

/** Finishes every engine's deferred products (the finisher core/src/deferred.ts calls). */
function finishAllDeferred(): void {
  try {
    for (const d of deferredOf.values()) d.finish();
  } finally {
    settleDeferred(); // after a failed product too: its outputs are not retried
  }
}

/**
 * C = op(A) @ op(B) as sgemm computes it (bitwise), handed to the engine's worker threads to run in the
 * background: the operands are copied now, and C is written once something reads it (an op taking it
 * as an input, a read, the free list) or the backward pass ends (core/src/deferred.ts). Returns false,
 * with nothing done, when the product should run now instead (outside core's backward pass, one
 * thread, no workers, a small or GEMV-shaped product, operands resident in another engine): then call
 * sgemm.
 */
export function sgemmDeferred(args: GemmArgs): boolean {
  if (!deferralOpen() || !gemmConfig.deferProducts) return false;
  const g = normalizeGemm(args);
  const e = getEngine();
  if (gemmConfig.forceJs || !e) return false;
  const other = engineOwning(g.a) ?? engineOwning(g.b);
  if (other && other !== e) return false;
  let d = deferredOf.get(e);
  if (!d) deferredOf.set(e, (d = new DeferredProducts(e, settleDeferred)));
  if (!d.defer(g, effectiveThreads(e))) return false;
  if (gemmConfig.trace) traceProduct('sgemm', g.m, g.n, g.k, g.transA, g.transB, g.batch, g.a, g.b, g.c);
  markDeferred(g.c, finishAllDeferred, (a) => ArrayBuffer.isView(a) && readByDeferredProducts(a));
  return true;
}

/**
 * Before `a` is overwritten in place (a gradient accumulated or scaled in its buffer): the deferred
 * products that read it where it lies in the engine's memory run first.
 */
export function finishProductsReading(a: ArrayBufferView): void {
  if (readByDeferredProducts(a)) finishAllDeferred();
}

/** Whether a deferred product still reads some of `a`'s bytes where they lie in an engine's memory. */
export function readByDeferredProducts(a: ArrayBufferView): boolean {
  if (!anyDeferred()) return false;
  const e = engineOwning(a);
  return e !== null && deferredOf.get(e)?.reads(a) === true;
}

/** Byte range [from, to) of one operand's stored elements (batch items included). */
function byteRange(arr: Float32Array, off: number, stride: number, batch: number, span: number): [number, number] {
  const from = arr.byteOffset + off * 4;
  return [from, from + ((batch - 1) * stride + span) * 4];
}

/** Throws when a product of the list reads what another one writes. */
function checkIndependent(gs: readonly Gemm[]): void {
  if (gs.length < 2) return;
  const ranges = gs.map((g) => {
    const [aSpan, bSpan, cSpan] = storedSpans(g);
    return {
      a: byteRange(g.a, g.aOffset, g.strideA, g.batch, aSpan),
      b: byteRange(g.b, g.bOffset, g.strideB, g.batch, bSpan),
      c: byteRange(g.c, g.cOffset, g.strideC, g.batch, cSpan),
    };
  });
  const overlap = (x: [number, number], y: [number, number]) => x[0] < y[1] && y[0] < x[1];
  gs.forEach((g, i) => {
    gs.forEach((h, j) => {
      if (i === j) return;
      const reads =
        (sameMemory(h.a, g.c) && overlap(ranges[j]!.a, ranges[i]!.c)) ||
        (sameMemory(h.b, g.c) && overlap(ranges[j]!.b, ranges[i]!.c));
      if (reads)
        throw new RangeError(
          `sgemmMany: product ${j} reads the output of product ${i}; run them as separate sgemm calls`,
        );
    });
  });
}

/** Runs a validated product (untraced: weightProduct's traced call lands here too). */
function runGemm(g: Gemm): void {
  // An operand resident in some engine's memory is read there in place.
  const e = gemmConfig.forceJs ? null : (engineOwning(g.b) ?? engineOwning(g.a) ?? getEngine());
  if (e) e.run(g, effectiveThreads(e));
  else sgemmJs(g);
}

export interface WeightProductArgs {
  m: number;
  n: number;
  k: number;
  /** x [m, k] row-major f32, rows `ldx` apart */
  x: Float32Array;
  /** elements from one row of x to the next (default k), e.g. H·k for one head's rows of [m, H, k] */
  ldx?: number;
  /** W [n, k] row-major: f32 values, bf16 bits, or E4M3 bytes (with `scales`) */
  w: Float32Array | Uint16Array | Uint8Array;
  /** E4M3 weights: f32 scale of each 128x128 block, [ceil(n/128), ceil(k/128)] (DeepSeek-V3's weight_scale_inv) */
  scales?: Float32Array;
  /** y [m, n], rows `ldy` apart, overwritten with x · Wᵀ (the elements between rows are left as they are) */
  y: Float32Array;
  /** elements from one row of y to the next (default n) */
  ldy?: number;
}

/**
 * Index of the first E4M3 NaN code (0x7f / 0xff) in `w`, or -1. The kernels decode E4M3 with integer
 * bit moves that read those two codes as ±480 (a NaN check would cost instructions per weight), and
 * quantization never produces them, so weights read from an FP8 checkpoint are checked once at load.
 */
export function fp8NaNIndex(w: Uint8Array): number {
  const isNaNCode = (j: number): boolean => (w[j]! & 0x7f) === 0x7f;
  const head = Math.min(w.length, (4 - (w.byteOffset % 4)) % 4);
  for (let j = 0; j < head; j++) if (isNaNCode(j)) return j;
  const words = Math.floor((w.length - head) / 4);
  const u32 = new Uint32Array(w.buffer, w.byteOffset + head, words);
  for (let i = 0; i < words; i++) {
    // bytes of t are <= 0x7f, so t + 0x01 sets a byte's top bit exactly where it was 0x7f (no carries)
    const t = u32[i]! & 0x7f7f7f7f;
    if (((t + 0x01010101) & 0x80808080) !== 0)
      for (let j = head + 4 * i; j < head + 4 * i + 4; j++) if (isNaNCode(j)) return j;
  }
  for (let j = head + 4 * words; j < w.length; j++) if (isNaNCode(j)) return j;
  return -1;
}

type WeightKind = 'f32' | 'bf16' | 'fp8';

const weightKindOf = (w: WeightProductArgs['w']): WeightKind =>
  w instanceof Uint16Array ? 'bf16' : w instanceof Uint8Array ? 'fp8' : 'f32';

/** Elements from the first of m rows `ld` apart to the end of the last one's `width` (0 when m is 0). */
const rowsSpan = (m: number, ld: number, width: number): number => (m === 0 ? 0 : (m - 1) * ld + width);

/** The weight's kind, after checking the product's arrays (clear errors instead of reads past an end). */
function checkProduct({
  m,
  n,
  k,
  x,
  w,
  scales,
  y,
  ldx = k,
  ldy = n,
}: Omit<WeightProductArgs, 'y'> & { y?: Float32Array }): WeightKind {
  const kind = weightKindOf(w);
  if (!Number.isInteger(ldx) || ldx < k || !Number.isInteger(ldy) || ldy < n)
    throw new RangeError(
      `weightProduct: row pitches ldx ${ldx} (k ${k}) and ldy ${ldy} (n ${n}) must be whole and at least k / n`,
    );
  // rows [0, m) of x and y at their pitches
  if (x.length < rowsSpan(m, ldx, k) || w.length < n * k || (y !== undefined && y.length < rowsSpan(m, ldy, n))) {
    throw new RangeError(
      `weightProduct: arrays too short for [${m}, ${k}] · [${n}, ${k}]ᵀ with row pitches ${ldx} / ${ldy} (x ${x.length}, w ${w.length}, y ${y?.length ?? 'none'})`,
    );
  }
  if (kind === 'fp8') {
    const sCount = Math.ceil(n / 128) * Math.ceil(k / 128);
    if (!(scales instanceof Float32Array && scales.length === sCount))
      throw new RangeError(
        `weightProduct: E4M3 weights [${n}, ${k}] need ${sCount} f32 block scales (128x128), got ${scales?.length ?? 'none'}`,
      );
  }
  return kind;
}

/**
 * `record` (a Gemv of this module's, reused call to call) set to product `a`: every field written,
 * absent pitches as the dense ones and absent scales as NO_SCALES, so all such records keep one object
 * shape (gemv-plans.ts).
 */
function setGemv(record: GemvRecord, a: WeightProductArgs, kind: WeightKind): void {
  record.m = a.m;
  record.n = a.n;
  record.k = a.k;
  record.x = a.x;
  record.ldx = a.ldx ?? a.k;
  record.w = a.w;
  record.kind = kind;
  record.scales = a.scales ?? NO_SCALES;
  record.y = a.y;
  record.ldy = a.ldy ?? a.n;
}

// weightProducts' records, routes and one engine's job list, reused call to call (a decode step makes a
// few hundred products; fresh records were garbage). The products run synchronously, never re-entered.
const productRecords: GemvRecord[] = [];
const productEngines: (WasmGemm | null)[] = [];
const productRoutes: number[] = [];
const ROUTE_GEMV = 0,
  ROUTE_WEIGHT_GEMM = 1,
  ROUTE_DONE = 2;
const ROUTES = [ROUTE_GEMV, ROUTE_WEIGHT_GEMM] as const;
const engineJob: Gemv[] = [];
// weightProduct's record and one-product job
const singleJob: GemvRecord[] = [new GemvRecord()];

/** Points the first `count` records back at nothing (so they keep no caller array alive). */
function releaseRecords(records: GemvRecord[], count: number): void {
  for (let i = 0; i < count; i++) records[i]!.release();
}

/** Whether a product of m rows against W [n, k] of `kind` takes the GEMV (else the GEMM). */
function takesGemv(m: number, n: number, k: number, kind: WeightKind): boolean {
  if (m <= gemmConfig.gemvMaxM) return true;
  return kind !== 'f32' && m <= gemmConfig.gemvMaxMLarge && n * k * 4 > gemmConfig.gemvLargeBytes;
}

/**
 * Whether a product past the GEMV runs on the weight GEMM (weight-gemm-kernel.ts: B~ packed panel by
 * panel from the stored weight, products batched into one job): bf16 / FP8 always; f32 up to
 * gemmConfig.f32WeightGemmMaxRows rows (a prefill's products). More rows (training's 1,024-token
 * products) take the f32 GEMM even where A~ for all of k would fit a workspace: its threads pack B once
 * between them and split the rows into several stripes each, where the weight GEMM's column ranges
 * each pack all the rows' A~ again (one range per thread for n <= 256 columns, so a late worker leaves
 * the caller both). Both give the same bits.
 */
function takesWeightGemm(m: number, kind: WeightKind): boolean {
  return kind !== 'f32' || m <= gemmConfig.f32WeightGemmMaxRows;
}

/**
 * y = x · Wᵀ against a Linear weight stored f32, bf16 or FP8 (decoded in registers). Small m streams
 * W once (GEMV, threaded over n); larger m runs the weight GEMM (a bf16 / FP8 weight widened to f32 as
 * it packs it), except against a bf16 / FP8 weight past gemvLargeBytes (see gemvMaxMLarge) and f32
 * products of more than gemmConfig.f32WeightGemmMaxRows rows (the f32 GEMM, see takesWeightGemm).
 */
export function weightProduct(a: WeightProductArgs): void {
  const kind = checkProduct(a);
  const { m, n, k, x, w, scales, y } = a;
  if (gemmConfig.trace) traceProduct('weightProduct', m, n, k, false, true, 1, x, w, y);
  const e = gemmConfig.forceJs ? null : (engineOwning(w) ?? getEngine());
  const gemv = e !== null && takesGemv(m, n, k, kind);
  // Many rows: the weight GEMM, widening a bf16 / FP8 weight as it packs it.
  if (e && (gemv || takesWeightGemm(m, kind))) {
    setGemv(singleJob[0]!, a, kind);
    try {
      if (gemv) e.gemvMany(singleJob, effectiveThreads(e));
      else e.weightGemmMany(singleJob, effectiveThreads(e));
    } finally {
      releaseRecords(singleJob, 1);
    }
    return;
  }
  const wf =
    kind === 'bf16'
      ? decodeBf16((w as Uint16Array).subarray(0, n * k))
      : kind === 'fp8'
        ? dequantizeFp8Weight(w as Uint8Array, scales!, n, k)
        : (w as Float32Array);
  runGemm(normalizeGemm({ m, n, k, a: x, lda: a.ldx ?? k, b: wf, transB: true, c: y, ldc: a.ldy ?? n }));
}

// argmaxProduct's screens, one per bf16 head (null: that head cannot be screened), made at first use; a
// screen's engine memory goes back once its head's array is collected
const headScreens = new WeakMap<Uint16Array, HeadScreen | null>();
const screensToRelease = new FinalizationRegistry<() => void>((release) => release());
const screenCounts = { screenedHeads: 0, screenedArgmaxes: 0, screenFallbacks: 0 };
/** argmaxProduct's full-product rows, kept call to call */
let argmaxRows = new Float32Array(0);

/**
 * The first index of each row's largest value of y = x · Wᵀ (NaN never wins; -1 for a row with nothing
 * above -∞), as firstMaxIndexF32 finds it over weightProduct's rows. With `screen`, a single row against a
 * bf16 W in an engine with the native kernels takes the screened head (head-screen.ts: the same index,
 * reading W's 8-bit copy, packed at the first such call and kept for W's array, and the few rows the
 * screen keeps): only for a W that never changes in place afterwards. Anything else runs weightProduct
 * and scans its rows.
 */
export function argmaxProduct(a: Omit<WeightProductArgs, 'y' | 'ldy'>, screen = false): Int32Array {
  const kind = checkProduct(a);
  const { m, n, k, x } = a;
  const out = new Int32Array(m);
  const e =
    screen && m === 1 && kind === 'bf16' && gemmConfig.screenedHead && !gemmConfig.forceJs ? engineOwning(a.w) : null;
  if (e !== null) {
    const w = a.w as Uint16Array;
    let headScreen = headScreens.get(w);
    if (headScreen === undefined) {
      headScreen = HeadScreen.create(e, w, n, k, effectiveThreads(e));
      headScreens.set(w, headScreen);
      if (headScreen) {
        screensToRelease.register(w, headScreen.releaser());
        screenCounts.screenedHeads++;
      }
    }
    const best = headScreen?.argmax(x, 0, effectiveThreads(e), (rows, count, y) =>
      weightProduct({ m: 1, n: count, k, x, w: rows, y }),
    );
    if (best !== null && best !== undefined) {
      screenCounts.screenedArgmaxes++;
      out[0] = best;
      return out;
    }
    if (headScreen) screenCounts.screenFallbacks++;
  }
  // the product's rows are scanned and dropped: one array kept for them (a batched decode's 16 x 129,280
  // floats fresh each step would be 8 MB of page faults)
  if (argmaxRows.length < m * n) argmaxRows = new Float32Array(m * n);
  const y = argmaxRows.subarray(0, m * n);
  weightProduct({ ...a, y });
  for (let r = 0; r < m; r++) out[r] = firstMaxIndexF32(y, r * n, n);
  return out;
}

/**
 * Several weight products at once, each as weightProduct computes it. The small-m ones whose weights
 * live in the same engine run as one GEMV job (one staging pass, one hand-out to the worker threads,
 * x staged once when products share it): what a decode step's expert projections need. The larger
 * ones on the weight GEMM run as one job per engine likewise (a prefill's experts). Every product is
 * checked before any runs.
 */
export function weightProducts(list: readonly WeightProductArgs[]): void {
  for (const a of list) checkProduct(a);
  while (productRecords.length < list.length) productRecords.push(new GemvRecord());
  let routed = 0;
  for (const a of list) {
    const kind = weightKindOf(a.w);
    const e = gemmConfig.forceJs ? null : (engineOwning(a.w) ?? getEngine());
    const route =
      e && takesGemv(a.m, a.n, a.k, kind)
        ? ROUTE_GEMV
        : e && takesWeightGemm(a.m, kind)
          ? ROUTE_WEIGHT_GEMM
          : ROUTE_DONE;
    if (route === ROUTE_DONE) {
      weightProduct(a);
      continue;
    }
    setGemv(productRecords[routed]!, a, kind);
    productEngines[routed] = e;
    productRoutes[routed] = route;
    routed++;
  }
  try {
    // the GEMV jobs (one per engine, in the order the engines first appear), then the weight GEMM's
    for (const route of ROUTES)
      for (let i = 0; i < routed; i++) {
        if (productRoutes[i] !== route) continue;
        const e = productEngines[i]!;
        engineJob.length = 0;
        for (let j = i; j < routed; j++)
          if (productRoutes[j] === route && productEngines[j] === e) {
            engineJob.push(productRecords[j]!);
            productRoutes[j] = ROUTE_DONE;
          }
        if (route === ROUTE_GEMV) e.gemvMany(engineJob, effectiveThreads(e));
        else e.weightGemmMany(engineJob, effectiveThreads(e));
      }
  } finally {
    engineJob.length = 0;
    productEngines.fill(null, 0, routed);
    releaseRecords(productRecords, routed);
  }
}

/**
 * The first of the engines' memories `place` succeeds in; past them all, one further memory (arena), if
 * an empty one could hold `bytes` (its maximum less the headroom) and `place` succeeds there.
 */
function inSomeEngine<T>(bytes: number, place: (e: WasmGemm) => T | null): T | null {
  for (const e of engines()) {
    const a = place(e);
    if (a) return a;
  }
  if (bytes > (gemmConfig.maxPages - 1) * 65536 - gemmConfig.residentHeadroom) return null;
  const fresh = addEngine();
  return fresh ? place(fresh) : null;
}

/**
 * Storage of `size` elements of `dtype` inside the GEMM engine's memory, where the kernels read it in
 * place (zero-filled, unless `zero` is false: for a kernel output that writes every element, where the
 * fill was a pass over the block for nothing); null when there is no engine or no room
 * (gemmConfig.residentHeadroom stays free for scratch). With a `pageOffset`, it starts that many bytes
 * past a 4 KiB page boundary (Arena.alloc): where a file's bytes fall in their pages, to map them.
 * Release it with freeResident.
 */
export function allocResident(dtype: DType, size: number, zero = true, pageOffset?: number): StorageArray | null {
  if (gemmConfig.forceJs || dtype === 'f64' || !getEngine()) return null;
  const bytes = size * bytesPerElement(dtype);
  return inSomeEngine(bytes + (pageOffset === undefined ? 0 : OS_PAGE), (e) => {
    const at = e.arena.alloc(bytes, gemmConfig.residentHeadroom, zero, pageOffset);
    return at === null ? null : e.arena.view(dtype, at, size);
  });
}

/** A tensor of a run allocResidentRun places: its dtype, elements and byte offset from the run's first. */
export interface RunPiece {
  dtype: DType;
  size: number;
  offset: number;
}

/**
 * Storage for tensors side by side at a file's relative offsets (Arena.allocRun), the first where
 * `fileOffset` falls within a 2 MiB page, in the process's address space, all in one engine's memory: one
 * mapping of the file covers them, whole 2 MiB pages where the page cache holds huge folios. Not zeroed.
 * Null when no memory holds them all (the caller places them one by one). Release each with freeResident.
 */
export function allocResidentRun(pieces: readonly RunPiece[], fileOffset: number): StorageArray[] | null {
  if (gemmConfig.forceJs || !getEngine()) return null;
  const spans = pieces.map((p) => ({ offset: p.offset, bytes: p.size * bytesPerElement(p.dtype) }));
  const last = spans[spans.length - 1]!;
  return inSomeEngine(last.offset + last.bytes + HUGE_PAGE, (e) => {
    const phase = (((fileOffset - e.hugePhase) % HUGE_PAGE) + HUGE_PAGE) % HUGE_PAGE;
    const at = e.arena.allocRun(spans, gemmConfig.residentHeadroom, phase, HUGE_PAGE);
    return at && pieces.map((p, i) => e.arena.view(p.dtype, at[i]!, p.size));
  });
}

/**
 * An f32 array of n elements in the first engine's memory for a kernel's output (its values are stale:
 * the kernel writes all of it), or null: outputs kept in host memory (gemmConfig.residentOutputs), no
 * engine, a memory that is not shared (a grow would detach the view), or no room (resident weights and
 * outputs together leave gemmConfig.residentHeadroom free). Only the first engine: the step's products
 * run there. Release it with freeResident.
 */
export function allocOutputF32(n: number): Float32Array | null {
  if (!gemmConfig.residentOutputs || gemmConfig.forceJs) return null;
  const e = getEngine();
  if (!e?.arena.shared) return null;
  const at = e.arena.alloc(n * 4, gemmConfig.residentHeadroom, false);
  return at === null ? null : (e.arena.view('f32', at, n) as Float32Array);
}

/** Whether `a` lies in the memory allocOutputF32 hands out (the first engine's); its byteOffset is its address there. */
export function inOutputMemory(a: ArrayBufferView): boolean {
  return createdEngine()?.arena.owns(a) ?? false;
}

/** Returns the allocOutputF32 block at byte address `at` (its array already collected). */
export function freeOutputBlock(at: number): void {
  createdEngine()!.arena.release(at);
}

/** Returns resident storage to the engine (the array must be one allocResident returned). */
export function freeResident(a: StorageArray): void {
  const e = engineOwning(a);
  if (!e) throw new Error('freeResident: not resident storage');
  e.arena.release(a.byteOffset);
}

/** Whether `a` lives in a GEMM engine's memory. */
export function isResident(a: ArrayBufferView): boolean {
  return !gemmConfig.forceJs && engineOwning(a) !== null;
}

/** Threads for large GEMMs (the calling thread counts as one). Default: available parallelism in Node, 1 elsewhere. */
export function setGemmThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`setGemmThreads: expected an integer >= 1, got ${n}`);
  gemmConfig.threads = Math.min(n, 64);
}

/**
 * Activations of bf16 / FP8 weight products of many rows (prefill), process-wide like the thread count:
 * 'f32' (default) or 'i16', the integer weight GEMM (i16-gemm-kernel.ts: its error bounds).
 */
export function setPrefillActivations(mode: 'f32' | 'i16'): void {
  if (mode !== 'f32' && mode !== 'i16')
    throw new RangeError(`setPrefillActivations: expected 'f32' or 'i16', got ${String(mode)}`);
  gemmConfig.prefillActivations = mode;
}

export function gemmInfo(): {
  simd: boolean;
  threads: number;
  relaxedSimd: boolean;
  /** the wasm kernels call native AVX-512 ones (native-kernels.ts) */
  nativeKernels: boolean;
  /** Linux backs the engine's memory with transparent huge pages (adviseHugePages) */
  hugePages: boolean;
  residentBytes: number;
  arenas: number;
  /**
   * argmaxProduct's screened heads: packed so far, and single-row argmaxes the screen decided (the rest,
   * `screenFallbacks`, ran the full product: x not finite, too many rows left)
   */
  screenedHeads: number;
  screenedArgmaxes: number;
  screenFallbacks: number;
} {
  const e = gemmConfig.forceJs ? null : getEngine();
  const all = e ? engines() : [];
  return {
    simd: e !== null,
    threads: effectiveThreads(e),
    relaxedSimd: e?.relaxed ?? false,
    nativeKernels: (e?.native ?? null) !== null,
    hugePages: e?.hugePages ?? false,
    residentBytes: all.reduce((s, x) => s + x.arena.usedBytes, 0),
    arenas: all.length,
    ...screenCounts,
  };
}
