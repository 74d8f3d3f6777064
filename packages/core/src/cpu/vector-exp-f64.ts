// e^x on the two f64 lanes of a v128, the same bits as V8's Math.exp — fdlibm's __ieee754_exp (V8's
// src/base/ieee754.cc) operation for operation, its branches turned into lane selects — for x <= 0 and
// NaN: the arguments of a softmax shifted by its running maximum (latent-rows-simd.ts). Positive x is
// outside the contract (V8 returns Math.E for 1; 2^k past 2^23 overflows the scaling below).
//   k = 0 where |x| <= ln2/2 (fdlibm tests the high word: below 0x3fd62e43_00000000), else
//       trunc(x·invln2 − 1/2) (fdlibm's ±1 band, hi = x ∓ ln2HI, is this formula's k = ±1 exactly)
//   hi = x − k·ln2HI, lo = k·ln2LO (k·ln2HI exact), r = hi − lo
//   c = r − t·(P1 + t·(P2 + t·(P3 + t·(P4 + t·P5)))), t = r²
//   y = 1 − ((lo − r·c / (2 − c)) − hi) — for k = 0 fdlibm writes 1 − (r·c / (c − 2) − r), the same
//       value: c − 2 = −(2 − c) and the quotients negate exactly under round-to-nearest
//   y · 2^(k+1000) · 2^−1000 — fdlibm's scaling below k = −1021, and for k >= −1021 both products are
//       exact (y · 2^k normal), as fdlibm's y · 2^k is
//   |x| < 2^−28: 1 + x; x < −745.13…: +0 (e^−∞ too); NaN stays NaN.
import type { FuncBuilder } from './gemm/wasm-emitter.js';
import { f64Const, op } from './simd-rows-emit.js';

/** The double with high word hi and low word lo (fdlibm gives its constants so). */
const word = (hi: number, lo: number) => new Float64Array(new Uint32Array([lo, hi]).buffer)[0]!;
const LN2_HI = word(0x3fe62e42, 0xfee00000);
const LN2_LO = word(0x3dea39ef, 0x35793c76);
const INV_LN2 = word(0x3ff71547, 0x652b82fe);
const P = [
  word(0x3fc55555, 0x5555553e),
  word(0xbf66c16c, 0x16bebd93),
  word(0x3f11566a, 0xaf25de2c),
  word(0xbebbbd41, 0xc5d26bf1),
  word(0x3e663769, 0x72bea4d0),
];
const UNDERFLOW = word(0xc0874910, 0xd52d3051);
const TWO_M1000 = 2 ** -1000;
/** The smallest |x| fdlibm reduces (its test is on the high word). */
const REDUCE_FROM = word(0x3fd62e43, 0);

/** Pushes the f64x2 constant v (both lanes). */
const splat = (f: FuncBuilder, v: number) => f64Const(f, v).simd(op.f64x2Splat);

/**
 * Emits y = e^x for the f64x2 in local x (kept); t: eight scratch v128 locals, y among them or not.
 */
export function emitExpF64x2(f: FuncBuilder, x: number, t: readonly number[], y: number): void {
  const [ax, kf, hi, lo, r, r2, c] = t as [number, number, number, number, number, number, number];
  f.get(x).simd(op.f64x2Abs).set(ax);
  // kf = trunc(x·invln2 − 1/2) as f64, zeroed where |x| < REDUCE_FROM
  f.get(x);
  splat(f, INV_LN2).simd(op.f64x2Mul);
  splat(f, -0.5).simd(op.f64x2Add);
  f.simd(op.truncSatF64x2Zero).simd(op.convertLowI32x4);
  f.get(ax);
  splat(f, REDUCE_FROM).simd(op.f64x2Ge);
  f.simd(op.v128And).set(kf);
  // hi, lo, r
  f.get(x).get(kf);
  splat(f, LN2_HI).simd(op.f64x2Mul).simd(op.f64x2Sub).set(hi);
  f.get(kf);
  splat(f, LN2_LO).simd(op.f64x2Mul).set(lo);
  f.get(hi).get(lo).simd(op.f64x2Sub).set(r);
  // c = r − t·(P1 + t·(P2 + t·(P3 + t·(P4 + t·P5))))
  f.get(r).get(r).simd(op.f64x2Mul).set(r2);
  f.get(r).get(r2);
  splat(f, P[4]!).simd(op.f64x2Mul);
  for (const p of [P[3]!, P[2]!, P[1]!]) {
    splat(f, p).simd(op.f64x2Add);
    f.get(r2).simd(op.f64x2Mul);
  }
  splat(f, P[0]!).simd(op.f64x2Add);
  f.get(r2).simd(op.f64x2Mul);
  f.simd(op.f64x2Sub).set(c);
  // y = 1 − ((lo − r·c / (2 − c)) − hi)
  splat(f, 1);
  f.get(lo);
  f.get(r).get(c).simd(op.f64x2Mul);
  splat(f, 2).get(c).simd(op.f64x2Sub);
  f.simd(op.f64x2Div).simd(op.f64x2Sub);
  f.get(hi).simd(op.f64x2Sub);
  f.simd(op.f64x2Sub);
  // · 2^(k+1000) (bits (k + 2023) << 52) · 2^−1000
  f.get(kf).simd(op.truncSatF64x2Zero);
  f.v128ConstI32(2023, 2023, 2023, 2023).simd(op.i32x4Add);
  f.simd(op.i64x2ExtendLowI32x4);
  f.i32(52).simd(op.i64x2Shl);
  f.simd(op.f64x2Mul);
  splat(f, TWO_M1000).simd(op.f64x2Mul).set(y);
  // |x| < 2^−28: 1 + x
  splat(f, 1).get(x).simd(op.f64x2Add);
  f.get(y).get(ax);
  splat(f, 2 ** -28).simd(op.f64x2Lt);
  f.simd(op.bitselect).set(y);
  // x below the underflow threshold: +0
  f.get(y).get(x);
  splat(f, UNDERFLOW).simd(op.f64x2Lt);
  f.simd(op.v128AndNot).set(y);
}
