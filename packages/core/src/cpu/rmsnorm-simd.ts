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
import { type FuncBuilder, I32, ModuleBuilder, V128, whileLoop } from './gemm/wasm-emitter.js';
import { hasSimd } from './gemm/runtime.js';

/** Floats of x, g and dx per trip through the module's memory; also the widest row it takes. */
const CHUNK = 16384;
const X_AT = 0;
const G_AT = CHUNK * 4;
const DX_AT = 2 * CHUNK * 4;
const W_AT = 3 * CHUNK * 4;
/** dw as f64 [CHUNK], then eps (f64). */
const DW_AT = 4 * CHUNK * 4;
const EPS_AT = DW_AT + CHUNK * 8;
const PAGES = Math.ceil((EPS_AT + 8) / 65536);

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

/**
 * rmsnormBackward(rows, n): x, g [rows, n] at X_AT, G_AT and w [n] at W_AT → dx [rows, n] at DX_AT;
 * dw [n] (f64 at DW_AT) accumulates the rows' terms; eps the f64 at EPS_AT.
 */
function buildModule(): Uint8Array<ArrayBuffer> {
  const m = new ModuleBuilder({
    module: 'env',
    name: 'memory',
    initialPages: PAGES,
    maximumPages: PAGES,
    shared: false,
  });
  const [f] = m.func('rmsnormBackward', [I32, I32]);
  const [rows, n] = [0, 1];
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
  memOp(f.i32(EPS_AT), 0x0a, 3).set(eps); // v128.load64_splat
  f.op(0x44, ...new Uint8Array(new Float64Array([1]).buffer)); // f64.const 1
  f64x2(f, 'splat').set(one);

  /** Pushes (row r's, row b's) floats at offset j of the region at `at`, widened to f64x2. */
  const twoRows = (at: number) => {
    f.get(b).get(j).add().i32(at).add(); // load32_lane's address, under the vector it fills
    f.get(r).get(j).add().i32(at).add();
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
        twoRows(X_AT);
        f.set(xv);
        f.get(ss).get(xv).get(xv);
        f64x2(f, 'mul');
        f64x2(f, 'add').set(ss);
        f.get(dot);
        twoRows(G_AT);
        f.get(j).i32(W_AT).add();
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
  /** dx of the row at byte offset `row` (lane `lane` of inv and c) and its dw terms; `wide`: two columns. */
  const column = (row: number, wide: boolean) => {
    const load = (at: number, rowRelative: boolean) => {
      if (rowRelative) f.get(row).get(j).add().i32(at).add();
      else f.get(j).i32(at).add();
      if (wide)
        memOp(f, 0x5d, 3); // v128.load64_zero
      else memOp(f, 0x09, 2); // v128.load32_splat
      f64x2(f, 'promote');
    };
    load(G_AT, true);
    f.set(gv);
    load(X_AT, true);
    f.set(xv);
    f.get(row).get(j).add().i32(DX_AT).add();
    f.get(invR).get(gv);
    f64x2(f, 'mul');
    load(W_AT, false);
    f64x2(f, 'mul').get(xv).get(cR);
    f64x2(f, 'mul');
    f64x2(f, 'sub');
    f64x2(f, 'demote');
    if (wide)
      memOp(f, 0x5b, 3).op(0); // v128.store64_lane 0
    else memOp(f, 0x5a, 2).op(0); // v128.store32_lane 0
    // dw[j..] += (g·x)·inv (f64 at DW_AT + 2j)
    f.get(j).i32(1).shl().i32(DW_AT).add();
    f.get(j).i32(1).shl().i32(DW_AT).add();
    if (wide) f.v128Load();
    else memOp(f, 0x5d, 3);
    f.get(gv).get(xv);
    f64x2(f, 'mul').get(invR);
    f64x2(f, 'mul');
    f64x2(f, 'add');
    if (wide) f.v128Store();
    else memOp(f, 0x5b, 3).op(0);
  };
  const pass2 = (row: number, lane: number) => {
    f.get(inv).simd(OP.extract).op(lane);
    f64x2(f, 'splat').set(invR);
    f.get(c).simd(OP.extract).op(lane);
    f64x2(f, 'splat').set(cR);
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
  addForward(m);
  return m.emit();
}

/**
 * rmsnorm(rows, n): x [rows, n] at X_AT and w [n] at W_AT → out [rows, n] at DX_AT, out = f32((x·inv)·w)
 * with inv = 1 / sqrt(ss / n + eps) as in the backward; eps the f64 at EPS_AT.
 */
function addForward(m: ModuleBuilder): void {
  const [f] = m.func('rmsnorm', [I32, I32]);
  const [rows, n] = [0, 1];
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
  memOp(f.i32(EPS_AT), 0x0a, 3).set(eps);
  f.op(0x44, ...new Uint8Array(new Float64Array([1]).buffer));
  f64x2(f, 'splat').set(one);
  const sums = () => {
    f.v128ConstI32(0, 0, 0, 0).set(ss);
    f.i32(0).set(j);
    whileLoop(
      f,
      () => f.get(j).get(rowBytes).ltU(),
      () => {
        f.get(b).get(j).add().i32(X_AT).add();
        f.get(r).get(j).add().i32(X_AT).add();
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
    f.get(row).get(j).add().i32(DX_AT).add();
    f.get(row).get(j).add().i32(X_AT).add();
    memOp(f, wide ? 0x5d : 0x09, wide ? 3 : 2);
    f64x2(f, 'promote').get(invR);
    f64x2(f, 'mul');
    f.get(j).i32(W_AT).add();
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

let engine:
  | {
      run: (rows: number, n: number) => void;
      forward: (rows: number, n: number) => void;
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
  engine = null;
  if (!hasSimd()) return engine;
  try {
    const memory = new WebAssembly.Memory({ initial: PAGES, maximum: PAGES });
    const inst = new WebAssembly.Instance(new WebAssembly.Module(buildModule()), { env: { memory } });
    engine = {
      run: inst.exports.rmsnormBackward as (rows: number, n: number) => void,
      forward: inst.exports.rmsnorm as (rows: number, n: number) => void,
      f32: new Float32Array(memory.buffer),
      f64: new Float64Array(memory.buffer),
    };
  } catch {
    engine = null;
  }
  return engine;
}

/**
 * dx = RMSNorm's input gradient of rows of x [rows, n] (g the output's gradient, w [n]), and dw [n] (f64,
 * zeroed by the caller) += the rows' weight-gradient terms in row order. Returns false, writing nothing,
 * where the kernel does not run (no SIMD128, rows wider than it takes, or nothing to do): the caller's
 * loop then does the work.
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
  const e = n > 0 && n <= CHUNK && x.length > 0 ? getEngine() : null;
  if (!e) return false;
  e.f32.set(w, W_AT / 4);
  e.f64.fill(0, DW_AT / 8, DW_AT / 8 + n);
  e.f64[EPS_AT / 8] = eps;
  const rowsPer = Math.floor(CHUNK / n);
  for (let at = 0; at < x.length; at += rowsPer * n) {
    const len = Math.min(rowsPer * n, x.length - at);
    e.f32.set(x.subarray(at, at + len), X_AT / 4);
    e.f32.set(g.subarray(at, at + len), G_AT / 4);
    e.run(len / n, n);
    dx.set(e.f32.subarray(DX_AT / 4, DX_AT / 4 + len), at);
  }
  dw.set(e.f64.subarray(DW_AT / 8, DW_AT / 8 + n));
  return true;
}

/**
 * out = RMSNorm of the rows of x [rows, n] times w [n] (see addForward); false, writing nothing, where the
 * kernel does not run (no SIMD128, rows wider than it takes, or nothing to do).
 */
export function rmsnormSimd(x: Float32Array, w: Float32Array, eps: number, out: Float32Array): boolean {
  const n = w.length;
  const e = n > 0 && n <= CHUNK && x.length > 0 ? getEngine() : null;
  if (!e) return false;
  e.f32.set(w, W_AT / 4);
  e.f64[EPS_AT / 8] = eps;
  const rowsPer = Math.floor(CHUNK / n);
  for (let at = 0; at < x.length; at += rowsPer * n) {
    const len = Math.min(rowsPer * n, x.length - at);
    e.f32.set(x.subarray(at, at + len), X_AT / 4);
    e.forward(len / n, n);
    out.set(e.f32.subarray(DX_AT / 4, DX_AT / 4 + len), at);
  }
  return true;
}
