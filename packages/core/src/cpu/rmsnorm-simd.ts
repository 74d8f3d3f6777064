// RMSNorm's forward and backward on f32 operands with WebAssembly SIMD128 (f64x2 lanes), for reduce.ts's
// rmsnorm and train-kernels.ts's rmsnormBackward, whose JavaScript loops ran their f64 operations one
// lane at a time. Bitwise the JavaScript kernels' results: the same f64 operations in the same order (no
// fused multiply-add in WebAssembly; division and square root correctly rounded in both; f32 values
// widened exactly, results rounded to nearest like a Float32Array store):
//   per row: ss = Σ x·x (and, backward, dot = Σ (g·w)·x) in j's order — two rows' chains side by side
//   in the lanes; inv = 1 / sqrt(ss / n + eps);
//   forward: out = (x·inv)·w, two columns per vector;
//   backward: c = ((inv·inv)·inv)·(dot / n); dx = ((inv·g)·w) − x·c and dw[j] += (g·x)·inv, two columns
//   per vector, the rows in order.
// The same kernels are row kernels of the GEMM engine's module (attention-rows-simd.ts): operands that
// live in its memory are used in place there, the forward's rows split over its threads when large.
import { type FuncBuilder, I32, type ModuleBuilder, V128, whileLoop } from './gemm/wasm-emitter.js';
import { effectiveThreads, hasSimd } from './gemm/runtime.js';
import { moduleOf, privateSimdModule } from './private-simd-module.js';
import type { WasmGemm } from './gemm/wasm-engine.js';
import { placeSpans, residentEngine, type Span } from './engine-operands.js';

/** Floats of x, g and dx per trip through the private module's memory; also the widest row it takes. */
const CHUNK = 16384;
const X_AT = 0;
const G_AT = CHUNK * 4;
const DX_AT = 2 * CHUNK * 4;
const W_AT = 3 * CHUNK * 4;
/** dw as f64 [CHUNK]. */
const DW_AT = 4 * CHUNK * 4;
const PAGES = Math.ceil((DW_AT + CHUNK * 8) / 65536);

/** A SIMD memory instruction (alignment 2^align, offset 0) at the address on the stack. */
const memOp = (f: FuncBuilder, opcode: number, align: number) => {
  f.simd(opcode).code.u32(align).u32(0);
  return f;
};
const OP = {
  splat: 0x14,
  extract: 0x21,
  add: 0xf0,
  sub: 0xf1,
  mul: 0xf2,
  div: 0xf3,
  sqrt: 0xef,
  promote: 0x5f,
  demote: 0x5e,
};
const f64x2 = (f: FuncBuilder, name: keyof typeof OP) => f.simd(OP[name]);

/** Pushes the f64 whose bits are the i32 locals lo, hi (how a row-kernel task passes eps). */
function f64OfWords(f: FuncBuilder, lo: number, hi: number): FuncBuilder {
  f.get(lo).op(0xad); // i64.extend_i32_u
  f.get(hi).op(0xad).op(0x42, 32).op(0x86); // i64.const 32, i64.shl
  return f.op(0x84).op(0xbf); // i64.or, f64.reinterpret_i64
}

/** The two i32 words of eps's f64 bits (low, high). */
function epsWords(eps: number): [number, number] {
  const w = new Int32Array(new Float64Array([eps]).buffer);
  return [w[0]!, w[1]!];
}

/**
 * rmsnormBackwardRows(x, g, w, dx, dw, rows, n, epsLo, epsHi): x, g [rows, n] and w [n] → dx [rows, n],
 * dw [n] (f64) += the rows' terms in row order (byte addresses; eps's f64 bits as two words). One thread
 * runs it: dw's sums over the rows keep their order (a split by rows, then columns, was slower,
 * docs/benchmarks.md, issue 11, fourteenth session).
 */
function addBackward(m: ModuleBuilder): void {
  const [f] = m.func('rmsnormBackwardRows', [I32, I32, I32, I32, I32, I32, I32, I32, I32]);
  const [X, G, W, DX, DW, rows, n, epsLo, epsHi] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const [i, r, b, j, end, rowBytes] = f.locals(I32, 6) as number[] as [number, number, number, number, number, number];
  const v = f.locals(V128, 11);
  const [ss, dot, xv, gv, inv, c, nv, eps, invR, cR, one] = v as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  f.get(n).i32(2).shl().set(rowBytes);
  f.get(n).op(0xb8); // f64.convert_i32_u
  f64x2(f, 'splat').set(nv);
  f64OfWords(f, epsLo, epsHi);
  f64x2(f, 'splat').set(eps);
  f.op(0x44, ...new Uint8Array(new Float64Array([1]).buffer)); // f64.const 1
  f64x2(f, 'splat').set(one);

  /** Pushes (row r's, row b's) floats at offset j of the operand at local `at`, widened to f64x2. */
  const twoRows = (at: number) => {
    f.get(b).get(j).add().get(at).add(); // load32_lane's address, under the vector it fills
    f.get(r).get(j).add().get(at).add();
    memOp(f, 0x09, 2); // v128.load32_splat
    memOp(f, 0x56, 2).op(1); // v128.load32_lane 1
    f64x2(f, 'promote');
  };
  /** ss and dot of rows r and b (equal for a lone row), then inv and c of both. */
  const sums = () => {
    f.v128ConstI32(0, 0, 0, 0).set(ss);
    f.v128ConstI32(0, 0, 0, 0).set(dot);
    f.i32(0).set(j);
    whileLoop(
      f,
      () => f.get(j).get(rowBytes).ltU(),
      () => {
        twoRows(X);
        f.set(xv);
        f.get(ss).get(xv).get(xv);
        f64x2(f, 'mul');
        f64x2(f, 'add').set(ss);
        f.get(dot);
        twoRows(G);
        f.get(j).get(W).add();
        memOp(f, 0x09, 2);
        f64x2(f, 'promote');
        f64x2(f, 'mul').get(xv);
        f64x2(f, 'mul');
        f64x2(f, 'add').set(dot);
        f.get(j).i32(4).add().set(j);
      },
    );
    f.get(one).get(ss).get(nv);
    f64x2(f, 'div').get(eps);
    f64x2(f, 'add');
    f64x2(f, 'sqrt');
    f64x2(f, 'div').set(inv);
    f.get(inv).get(inv);
    f64x2(f, 'mul').get(inv);
    f64x2(f, 'mul').get(dot).get(nv);
    f64x2(f, 'div');
    f64x2(f, 'mul').set(c);
  };
  const pass2 = (row: number, lane: number) => {
    f.get(inv).simd(OP.extract).op(lane);
    f64x2(f, 'splat').set(invR);
    f.get(c).simd(OP.extract).op(lane);
    f64x2(f, 'splat').set(cR);
    const cols: ColumnLocals = { row, j, x: X, g: G, w: W, dx: DX, dw: DW, gv, xv, invR, cR };
    // column pairs, then an odd last one
    f.i32(0).set(j);
    f.get(rowBytes).i32(-8).and().set(end);
    whileLoop(
      f,
      () => f.get(j).get(end).ltU(),
      () => {
        backwardColumn(f, cols, true);
        f.get(j).i32(8).add().set(j);
      },
    );
    f.get(n).i32(1).and().if_();
    backwardColumn(f, cols, false);
    f.end();
  };
  rowPairs(f, { i, rows, rowBytes, r, b }, sums, pass2);
}

/** Locals of the backward's second half over one row. */
interface ColumnLocals {
  /** the row's byte offset in x, g and dx; j: the column's byte offset */
  row: number;
  j: number;
  /** byte addresses of the operands (dw: f64) */
  x: number;
  g: number;
  w: number;
  dx: number;
  dw: number;
  /** f64x2 scratch, then the row's inv and c splat */
  gv: number;
  xv: number;
  invR: number;
  cR: number;
}

/**
 * dx = ((inv·g)·w) − x·c and dw += (g·x)·inv for the two columns at byte offset j of the row (one when
 * !wide).
 */
function backwardColumn(f: FuncBuilder, l: ColumnLocals, wide: boolean): void {
  const { row, j, x, g, w, dx, dw, gv, xv, invR, cR } = l;
  const load = (at: number, rowRelative: boolean) => {
    if (rowRelative) f.get(row).get(j).add().get(at).add();
    else f.get(j).get(at).add();
    if (wide)
      memOp(f, 0x5d, 3); // v128.load64_zero
    else memOp(f, 0x09, 2); // v128.load32_splat
    f64x2(f, 'promote');
  };
  load(g, true);
  f.set(gv);
  load(x, true);
  f.set(xv);
  f.get(row).get(j).add().get(dx).add();
  f.get(invR).get(gv);
  f64x2(f, 'mul');
  load(w, false);
  f64x2(f, 'mul').get(xv).get(cR);
  f64x2(f, 'mul');
  f64x2(f, 'sub');
  f64x2(f, 'demote');
  if (wide)
    memOp(f, 0x5b, 3).op(0); // v128.store64_lane 0
  else memOp(f, 0x5a, 2).op(0); // v128.store32_lane 0
  // dw[j..] += (g·x)·inv (dw's f64 at dw + 2j)
  f.get(j).i32(1).shl().get(dw).add();
  f.get(j).i32(1).shl().get(dw).add();
  if (wide) f.v128Load();
  else memOp(f, 0x5d, 3);
  f.get(gv).get(xv);
  f64x2(f, 'mul').get(invR);
  f64x2(f, 'mul');
  f64x2(f, 'add');
  if (wide) f.v128Store();
  else memOp(f, 0x5b, 3).op(0);
}

/**
 * rmsnormRows(x, w, out, rows, n, epsLo, epsHi): x [rows, n] and w [n] → out [rows, n], out =
 * f32((x·inv)·w) with inv = 1 / sqrt(ss / n + eps) as in the backward (byte addresses; eps as two words).
 */
function addForward(m: ModuleBuilder): void {
  const [f] = m.func('rmsnormRows', [I32, I32, I32, I32, I32, I32, I32]);
  const [X, W, OUT, rows, n, epsLo, epsHi] = [0, 1, 2, 3, 4, 5, 6];
  const [i, r, b, j, end, rowBytes] = f.locals(I32, 6) as number[] as [number, number, number, number, number, number];
  const [ss, xv, inv, nv, eps, invR, one] = f.locals(V128, 7) as number[] as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  f.get(n).i32(2).shl().set(rowBytes);
  f.get(n).op(0xb8); // f64.convert_i32_u
  f64x2(f, 'splat').set(nv);
  f64OfWords(f, epsLo, epsHi);
  f64x2(f, 'splat').set(eps);
  f.op(0x44, ...new Uint8Array(new Float64Array([1]).buffer));
  f64x2(f, 'splat').set(one);
  const sums = () => {
    f.v128ConstI32(0, 0, 0, 0).set(ss);
    f.i32(0).set(j);
    whileLoop(
      f,
      () => f.get(j).get(rowBytes).ltU(),
      () => {
        f.get(b).get(j).add().get(X).add();
        f.get(r).get(j).add().get(X).add();
        memOp(f, 0x09, 2);
        memOp(f, 0x56, 2).op(1);
        f64x2(f, 'promote').set(xv);
        f.get(ss).get(xv).get(xv);
        f64x2(f, 'mul');
        f64x2(f, 'add').set(ss);
        f.get(j).i32(4).add().set(j);
      },
    );
    f.get(one).get(ss).get(nv);
    f64x2(f, 'div').get(eps);
    f64x2(f, 'add');
    f64x2(f, 'sqrt');
    f64x2(f, 'div').set(inv);
  };
  const column = (row: number, wide: boolean) => {
    f.get(row).get(j).add().get(OUT).add();
    f.get(row).get(j).add().get(X).add();
    memOp(f, wide ? 0x5d : 0x09, wide ? 3 : 2);
    f64x2(f, 'promote').get(invR);
    f64x2(f, 'mul');
    f.get(j).get(W).add();
    memOp(f, wide ? 0x5d : 0x09, wide ? 3 : 2);
    f64x2(f, 'promote');
    f64x2(f, 'mul');
    f64x2(f, 'demote');
    if (wide) memOp(f, 0x5b, 3).op(0);
    else memOp(f, 0x5a, 2).op(0);
  };
  const pass2 = (row: number, lane: number) => {
    f.get(inv).simd(OP.extract).op(lane);
    f64x2(f, 'splat').set(invR);
    f.i32(0).set(j);
    f.get(rowBytes).i32(-8).and().set(end);
    whileLoop(
      f,
      () => f.get(j).get(end).ltU(),
      () => {
        column(row, true);
        f.get(j).i32(8).add().set(j);
      },
    );
    f.get(n).i32(1).and().if_();
    column(row, false);
    f.end();
  };
  rowPairs(f, { i, rows, rowBytes, r, b }, sums, pass2);
}

/** RMSNorm's kernels (into the GEMM engine's row-kernels module too: attention-rows-simd.ts). */
export function addRmsnormRows(m: ModuleBuilder): void {
  addForward(m);
  addBackward(m);
}

type RowsKernel = (...args: number[]) => void;
let engine:
  | {
      forward: RowsKernel;
      backward: RowsKernel;
      f32: Float32Array;
      f64: Float64Array;
    }
  | null
  | undefined;

/**
 * The row driver both kernels share: rows two at a time (row addresses in locals r and b, their sums in
 * the two lanes), then a lone last row paired with itself (lane 0 used).
 */
function rowPairs(
  f: FuncBuilder,
  l: { i: number; rows: number; rowBytes: number; r: number; b: number },
  sums: () => void,
  pass2: (row: number, lane: number) => void,
): void {
  const { i, rows, rowBytes, r, b } = l;
  f.i32(0).set(i);
  whileLoop(
    f,
    () => f.get(i).i32(1).add().get(rows).ltU(),
    () => {
      f.get(i).get(rowBytes).mul().tee(r).get(rowBytes).add().set(b);
      sums();
      pass2(r, 0);
      pass2(b, 1);
      f.get(i).i32(2).add().set(i);
    },
  );
  f.get(i).get(rows).ltU().if_();
  f.get(i).get(rowBytes).mul().tee(r).set(b);
  sums();
  pass2(r, 0);
  f.end();
}

function getEngine() {
  if (engine !== undefined) return engine;
  const mod = privateSimdModule(moduleOf(addRmsnormRows, PAGES), PAGES);
  engine = mod && {
    backward: mod.exports.rmsnormBackwardRows as RowsKernel,
    forward: mod.exports.rmsnormRows as RowsKernel,
    f32: new Float32Array(mod.memory.buffer),
    f64: new Float64Array(mod.memory.buffer),
  };
  return engine;
}

/**
 * How the resident forward splits over the engine's threads: tasks of at least `taskFloats` floats of x
 * (a smaller pass runs on the calling thread alone), the workers woken only for a pass of at least
 * `wakeFloats` (below it, split only while they are awake). Below ~1M floats a split was level or slower
 * even with the worker awake (docs/benchmarks.md, issue 11, fourteenth session).
 */
export const RMSNORM_SPLIT = { taskFloats: 1 << 19, wakeFloats: 1 << 21 };
/**
 * Places a pass's operands (inputs x, g, w; its output) in the GEMM engine's memory that holds one of
 * them (engine-operands.ts: host ones copied in, a host output copied back by `done`), after `head` bytes
 * of the job's own; null: none lives in an engine, or no room (the staged fallback runs).
 */
function placeJob(inputs: Float32Array[], out: Float32Array, head: number) {
  let e: WasmGemm | null = null;
  for (const a of [out, ...inputs]) e ??= residentEngine(a);
  const span = (array: Float32Array): Span => ({ array, offset: 0, length: array.length });
  const placed = e && placeSpans(e, inputs.map(span), [span(out)], head);
  return e && placed ? { e, at: placed.at, block: placed.block, done: () => placed.copyOut(out.length) } : null;
}

/** Tasks of a forward over `floats` floats: one per RMSNORM_SPLIT.taskFloats, at most two per thread. */
function taskCount(e: WasmGemm, floats: number): number {
  const threads = e.rowJobThreads(effectiveThreads(e), floats, RMSNORM_SPLIT.wakeFloats);
  return threads === 1 ? 1 : Math.max(1, Math.min(2 * threads, Math.floor(floats / RMSNORM_SPLIT.taskFloats)));
}

/**
 * dx = RMSNorm's input gradient of rows of x [rows, n] (g the output's gradient, w [n]), and dw [n] (f64,
 * zeroed by the caller) += the rows' weight-gradient terms in row order. One of x, g, w and dx in a GEMM
 * engine's memory: a job there on the calling thread, in place (the others copied in, dx back out);
 * otherwise staged through this module's memory. Returns false, writing nothing, where the kernel does not run (no SIMD128,
 * staged rows wider than it takes, or nothing to do): the caller's loop then does the work.
 */
export function rmsnormBackwardSimd(
  x: Float32Array,
  w: Float32Array,
  g: Float32Array,
  eps: number,
  dx: Float32Array,
  dw: Float64Array,
): boolean {
  const n = w.length;
  if (n === 0 || x.length === 0 || !hasSimd()) return false;
  const rows = x.length / n;
  const [lo, hi] = epsWords(eps);
  // the job's block: dw (f64 [n]), then w when staged
  const job = placeJob([x, g, w], dx, 8 * n);
  if (job) {
    const { e, block: dwAt } = job;
    new Float64Array(e.heap().buffer, dwAt, n).fill(0);
    const [xAt, gAt, wAt, dxAt] = job.at as [number, number, number, number];
    e.runRowKernelList('rmsnormBackwardRows', [[xAt, gAt, wAt, dxAt, dwAt, rows, n, lo, hi]], 1);
    job.done();
    dw.set(new Float64Array(e.heap().buffer, dwAt, n));
    return true;
  }
  const s = n <= CHUNK ? getEngine() : null;
  if (!s) return false;
  s.f32.set(w, W_AT / 4);
  s.f64.fill(0, DW_AT / 8, DW_AT / 8 + n);
  const rowsPer = Math.floor(CHUNK / n);
  for (let at = 0; at < x.length; at += rowsPer * n) {
    const len = Math.min(rowsPer * n, x.length - at);
    s.f32.set(x.subarray(at, at + len), X_AT / 4);
    s.f32.set(g.subarray(at, at + len), G_AT / 4);
    s.backward(X_AT, G_AT, W_AT, DX_AT, DW_AT, len / n, n, lo, hi);
    dx.set(s.f32.subarray(DX_AT / 4, DX_AT / 4 + len), at);
  }
  dw.set(s.f64.subarray(DW_AT / 8, DW_AT / 8 + n));
  return true;
}

/**
 * out = RMSNorm of the rows of x [rows, n] times w [n] (see addForward): one of x, w and out in a GEMM
 * engine's memory — a job there, in place (the others copied in, out back), its rows split over the
 * engine's threads when large (RMSNORM_SPLIT); otherwise staged through this module's memory.
 * False, writing nothing, where the kernel does not run (no SIMD128, staged rows wider than it takes, or
 * nothing to do).
 */
export function rmsnormSimd(x: Float32Array, w: Float32Array, eps: number, out: Float32Array): boolean {
  const n = w.length;
  if (n === 0 || x.length === 0 || !hasSimd()) return false;
  const [lo, hi] = epsWords(eps);
  const job = placeJob([x, w], out, 0);
  if (job) {
    const { e } = job;
    const [xAt, wAt, outAt] = job.at as [number, number, number];
    const rows = x.length / n;
    const tasks = taskCount(e, x.length);
    e.runRowKernels('rmsnormRows', rows, Math.ceil(rows / tasks), effectiveThreads(e), (r0, r1) => [
      xAt + 4 * n * r0,
      wAt,
      outAt + 4 * n * r0,
      r1 - r0,
      n,
      lo,
      hi,
    ]);
    job.done();
    return true;
  }
  const s = n <= CHUNK ? getEngine() : null;
  if (!s) return false;
  s.f32.set(w, W_AT / 4);
  const rowsPer = Math.floor(CHUNK / n);
  for (let at = 0; at < x.length; at += rowsPer * n) {
    const len = Math.min(rowsPer * n, x.length - at);
    s.f32.set(x.subarray(at, at + len), X_AT / 4);
    s.forward(X_AT, W_AT, DX_AT, len / n, n, lo, hi);
    out.set(s.f32.subarray(DX_AT / 4, DX_AT / 4 + len), at);
  }
  return true;
}
