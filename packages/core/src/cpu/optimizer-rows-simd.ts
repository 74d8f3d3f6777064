// The optimizer step's kernels in the GEMM engine's row-kernels module (attention-rows-simd.ts), run as
// tasks the calling thread and the GEMM workers share (optimizer-jobs.ts):
//   adamwRows      AdamW over n elements of f32 weights w with gradients g·scale, moments f32 or bf16 —
//                  adamw-simd.ts's f64x2 update operation for operation (so the scalar loop's bits), with
//                  g read as f32(g·scale): the f32 product a separate `x *= scale` pass stores (the
//                  product of two f32 is exact in f64, then rounded once), so clipping folds in bitwise.
//   sumSquaresRow  Σ x² over n f32 in f64, one chain in element order: the JavaScript loop's bits.
import { F64, I32, type FuncBuilder, type ModuleBuilder, V128, whileLoop } from './gemm/wasm-emitter.js';
import { load2, memOp, op, pairs, store2 } from './simd-rows-emit.js';

/** The f64 constants adamwRows reads at its `consts` address, in this order. */
export const ADAMW_CONSTANTS = [
  'b1',
  'oneMinusB1',
  'b2',
  'oneMinusB2',
  'c1',
  'c2',
  'eps',
  'lr',
  'decay',
  'scale',
] as const;

/**
 * adamwRows(w, g, m, v, n, consts, bf16): byte addresses; m and v are f32, or bf16 bits when bf16 ≠ 0
 * (widened exactly; stored rounded from the f32 the scalar loop stores, to nearest even, NaN quieted as
 * encodeBf16 does).
 */
function addAdamwRows(m: ModuleBuilder): void {
  const [f] = m.func('adamwRows', [I32, I32, I32, I32, I32, I32, I32]);
  const [w, g, mm, vv, n, consts, bf16] = [0, 1, 2, 3, 4, 5, 6];
  const k = {} as Record<(typeof ADAMW_CONSTANTS)[number], number>;
  ADAMW_CONSTANTS.forEach((name, i) => {
    k[name] = f.local(V128);
    f.get(consts);
    f.i32(8 * i).add();
    memOp(f, 0x0a, 3); // v128.load64_splat
    f.set(k[name]);
  });
  const [gi, mi, vi, u] = f.locals(V128, 4) as [number, number, number, number];
  const [j, end] = f.locals(I32, 2) as [number, number];
  /** Pushes the moment at byte offset j (of the f32 elements) of `base` as f64x2. */
  const loadMoment = (base: number, wide: boolean, bits: boolean) => {
    if (!bits) {
      f.get(base).get(j).add();
      load2(f, wide);
      return;
    }
    f.get(base).get(j).i32(1).shrU().add();
    if (wide) f.load32Zero();
    else memOp(f, 0x08, 1); // v128.load16_splat
    f.i32x4ExtendLowI16x8U().i32(16).i32x4Shl().simd(op.promoteLow);
  };
  /** Stores the f64x2 in local `x` at byte offset j of `base`: f32, or bf16 bits rounded from that f32. */
  const storeMoment = (base: number, x: number, wide: boolean, bits: boolean) => {
    if (!bits) {
      f.get(base).get(j).add().get(x);
      store2(f, wide);
      return;
    }
    f.get(base).get(j).i32(1).shrU().add();
    f.get(x).simd(op.demoteZero).set(u);
    roundToBf16(f, u);
    f.get(u).get(u).simd(0x86); // i16x8.narrow_i32x4_u (every lane is in [0, 0xffff])
    if (wide)
      memOp(f, 0x5a, 2).op(0); // v128.store32_lane 0: two bf16
    else memOp(f, 0x59, 1).op(0); // v128.store16_lane 0
  };
  const update = (bits: boolean) =>
    pairs(f, n, j, end, (wide) => {
      // g = f32(g·scale), widened again
      f.get(g).get(j).add();
      load2(f, wide).get(k.scale).simd(op.f64x2Mul).simd(op.demoteZero).simd(op.promoteLow).set(gi);
      // m = b1·m + (1 − b1)·g;  v = b2·v + ((1 − b2)·g)·g
      loadMoment(mm, wide, bits);
      f.get(k.b1).simd(op.f64x2Mul);
      f.get(k.oneMinusB1).get(gi).simd(op.f64x2Mul);
      f.simd(op.f64x2Add).set(mi);
      loadMoment(vv, wide, bits);
      f.get(k.b2).simd(op.f64x2Mul);
      f.get(k.oneMinusB2).get(gi).simd(op.f64x2Mul).get(gi).simd(op.f64x2Mul);
      f.simd(op.f64x2Add).set(vi);
      storeMoment(mm, mi, wide, bits);
      storeMoment(vv, vi, wide, bits);
      // w = w·decay − (lr·(m / c1)) / (sqrt(v / c2) + eps), from the unrounded m and v
      f.get(w).get(j).add();
      f.get(w).get(j).add();
      load2(f, wide).get(k.decay).simd(op.f64x2Mul);
      f.get(k.lr).get(mi).get(k.c1).simd(op.f64x2Div).simd(op.f64x2Mul);
      f.get(vi).get(k.c2).simd(op.f64x2Div).simd(0xef).get(k.eps).simd(op.f64x2Add); // f64x2.sqrt
      f.simd(op.f64x2Div).simd(op.f64x2Sub);
      store2(f, wide);
    });
  f.get(bf16).if_();
  update(true);
  f.else_();
  update(false);
  f.end();
}

/** The i32 lanes of local u (f32 bits) → their bf16 bits, as encodeBf16 rounds (adamw-simd.ts's narrow). */
function roundToBf16(f: FuncBuilder, u: number): void {
  const splat = (v: number) => f.i32(v).simd(op.i32x4Splat);
  const shrU16 = () => f.i32(16).simd(0xad); // i32x4.shr_u
  f.get(u);
  shrU16();
  splat(0x40);
  f.simd(0x50); // v128.or: the NaN case, quieted
  f.get(u);
  splat(0x7fff);
  f.simd(op.i32x4Add);
  f.get(u);
  shrU16();
  splat(1);
  f.v128And();
  f.simd(op.i32x4Add);
  shrU16(); // rounded to nearest even
  f.get(u).get(u);
  f.simd(0x42); // f32x4.ne: NaN lanes
  f.simd(op.bitselect);
  f.set(u);
}

/** sumSquaresRow(x, n, out): the f64 at byte address out = Σ x[i]² over n f32 at x, in order. */
function addSumSquaresRow(m: ModuleBuilder): void {
  const [f] = m.func('sumSquaresRow', [I32, I32, I32]);
  const [x, n, out] = [0, 1, 2];
  const [s, xi] = f.locals(F64, 2) as [number, number];
  const [j, end] = f.locals(I32, 2) as [number, number];
  f.get(n).i32(2).shl().set(end);
  whileLoop(
    f,
    () => f.get(j).get(end).ltU(),
    () => {
      f.get(x).get(j).add().f32Load().op(op.f64Promote).set(xi);
      f.get(s).get(xi).get(xi).op(op.f64Mul).op(op.f64Add).set(s);
      f.get(j).i32(4).add().set(j);
    },
  );
  f.get(out).get(s).op(op.f64Store, 3, 0);
}

export function addOptimizerRows(m: ModuleBuilder): void {
  addAdamwRows(m);
  addSumSquaresRow(m);
}
