// Emitting helpers shared by the row-pass kernels (attention-rows-simd.ts, latent-rows-simd.ts): f32 rows
// read as f64x2 pairs and written back rounded, raw opcodes the emitter has no method for.
import { type FuncBuilder, whileLoop } from './gemm/wasm-emitter.js';

/** A SIMD memory instruction (alignment 2^align) at the address on the stack. */
export const memOp = (f: FuncBuilder, opcode: number, align: number) => {
  f.simd(opcode).code.u32(align).u32(0);
  return f;
};
export const op = {
  f64Ne: 0x62,
  f64Lt: 0x63,
  f64Gt: 0x64,
  f64Add: 0xa0,
  f64Sub: 0xa1,
  f64Mul: 0xa2,
  f64Div: 0xa3,
  f64Max: 0xa5,
  f64Promote: 0xbb,
  f64Load: 0x2b,
  f64Store: 0x39,
  f64x2Splat: 0x14,
  f64x2Extract: 0x21,
  f64x2Max: 0xf5,
  f64x2Add: 0xf0,
  f64x2Sub: 0xf1,
  f64x2Mul: 0xf2,
  f64x2Div: 0xf3,
  f64x2Abs: 0xec,
  f64x2Gt: 0x4a,
  f64x2Lt: 0x49,
  f64x2Ge: 0x4c,
  promoteLow: 0x5f,
  demoteZero: 0x5e,
  v128And: 0x4e,
  v128AndNot: 0x4f,
  bitselect: 0x52,
  i32x4Add: 0xae,
  i32x4Splat: 0x11,
  truncSatF64x2Zero: 0xfc,
  convertLowI32x4: 0xfe,
  i64x2ExtendLowI32x4: 0xc7,
  i64x2Shl: 0xcb,
} as const;

export function f64Const(f: FuncBuilder, v: number): FuncBuilder {
  const b = new Uint8Array(new Float64Array([v]).buffer);
  return f.op(0x44, ...b);
}

/** Pushes two f32 at the address on the stack widened to f64x2 (one, repeated, when !wide). */
export function load2(f: FuncBuilder, wide: boolean): FuncBuilder {
  if (wide)
    memOp(f, 0x5d, 3); // v128.load64_zero
  else memOp(f, 0x09, 2); // v128.load32_splat
  return f.simd(op.promoteLow);
}

/** Stores the f64x2 on the stack rounded to f32 at the address below it (its first lane only when !wide). */
export function store2(f: FuncBuilder, wide: boolean): FuncBuilder {
  f.simd(op.demoteZero);
  if (wide) return memOp(f, 0x5b, 3).op(0); // v128.store64_lane 0
  return memOp(f, 0x5a, 2).op(0); // v128.store32_lane 0
}

/**
 * For byte offsets j over a row of `len` floats (local): body(true) per pair of floats, then body(false)
 * for the last one when len is odd. j: an i32 scratch local; end: another.
 */
export function pairs(f: FuncBuilder, len: number, j: number, end: number, body: (wide: boolean) => void): void {
  f.i32(0).set(j);
  f.get(len).i32(-2).and().i32(2).shl().set(end);
  whileLoop(
    f,
    () => f.get(j).get(end).ltU(),
    () => {
      body(true);
      f.get(j).i32(8).add().set(j);
    },
  );
  f.get(len).i32(1).and().if_();
  body(false);
  f.end();
}

/** row[len .. to) = 0 by memory.fill (nothing when to <= len). */
export function zeroTail(f: FuncBuilder, row: number, len: number, to: number): void {
  f.get(len).get(to).ltU().if_();
  f.get(row).get(len).i32(2).shl().add();
  f.i32(0);
  f.get(to).get(len).sub().i32(2).shl();
  f.op(0xfc, 0x0b, 0x00); // memory.fill
  f.end();
}
