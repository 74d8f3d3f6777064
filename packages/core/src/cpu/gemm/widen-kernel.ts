// Widening a bf16 or FP8 (E4M3, 128x128 block scales) weight [n, k] to row-major f32 inside the wasm
// memory, so products with many rows (prefill) run the f32 GEMM on it in place. Vectorised: a bf16 is
// the top half of an f32, and an E4M3 byte becomes one through the same bit trick as the GEMV
// (`(b << 4) & 0x87f0` as a bf16 is the value times 2^-120; the 2^120 goes into the block scale).
import { F32, I32, type ModuleBuilder, V128, whileLoop } from './wasm-emitter.js';

/** widen_bf16(src, count, dst): count bf16 values at src (bytes) to f32 at dst. */
function genWidenBf16(mb: ModuleBuilder): void {
  const [f] = mb.func('widen_bf16', [I32, I32, I32]);
  const [src, count, dst] = [0, 1, 2];
  const end = f.local(I32);
  const v = f.local(V128);
  f.get(src).get(count).i32(2).mul().add().set(end);
  whileLoop(
    f,
    () => f.get(src).i32(16).add().get(end).leU(),
    () => {
      f.get(src).v128Load().set(v);
      f.get(dst).get(v).i32x4ExtendLowI16x8U().i32(16).i32x4Shl().v128Store();
      f.get(dst).get(v).i32x4ExtendHighI16x8U().i32(16).i32x4Shl().v128Store(16);
      f.get(src).i32(16).add().set(src);
      f.get(dst).i32(32).add().set(dst);
    },
  );
  whileLoop(
    f,
    () => f.get(src).get(end).ltU(),
    () => {
      f.get(dst).get(src).i32Load16U().i32(16).shl().f32ReinterpretI32().f32Store();
      f.get(src).i32(2).add().set(src);
      f.get(dst).i32(4).add().set(dst);
    },
  );
}

/**
 * widen_fp8(src, n, k, dst, s, lds): E4M3 W [n, k] at src, f32 scales [ceil(n/128), ceil(k/128)]
 * at s (row stride lds bytes), to f32 W · scale at dst.
 */
function genWidenFp8(mb: ModuleBuilder): void {
  const [f] = mb.func('widen_fp8', [I32, I32, I32, I32, I32, I32]);
  const [src, n, k, dst, s, lds] = [0, 1, 2, 3, 4, 5];
  const r = f.local(I32);
  const kb = f.local(I32);
  const end = f.local(I32);
  const sRow = f.local(I32);
  const sc = f.local(F32);
  const sv = f.local(V128);
  const v = f.local(V128);
  const h = f.local(V128);
  const b = f.local(I32);
  const two = f.local(V128);
  // Times 2^120 before the scale (not scale · 2^120, which overflows for scales past 2^8).
  const TWO120 = 2 ** 120;
  f.f32c(TWO120).f32x4Splat().set(two);
  f.i32(0).set(r);
  whileLoop(
    f,
    () => f.get(r).get(n).ltU(),
    () => {
      f.get(s).get(r).i32(7).shrU().get(lds).mul().add().set(sRow);
      f.i32(0).set(kb);
      whileLoop(
        f,
        () => f.get(kb).get(k).ltU(),
        () => {
          // end = src + min(128, k - kb)
          f.get(src).i32(128).get(k).get(kb).sub().i32(128).get(k).get(kb).sub().ltU().select().add().set(end);
          f.get(sRow).get(kb).i32(7).shrU().i32(4).mul().add().f32Load().set(sc);
          f.get(sc).f32x4Splat().set(sv);
          whileLoop(
            f,
            () => f.get(src).i32(16).add().get(end).leU(),
            () => {
              f.get(src).v128Load().set(v);
              for (let half = 0; half < 2; half++) {
                f.get(v);
                if (half === 0) f.i16x8ExtendLowI8x16S();
                else f.i16x8ExtendHighI8x16S();
                f.i32(4).i16x8Shl().v128ConstI32(0x87f087f0, 0x87f087f0, 0x87f087f0, 0x87f087f0).v128And().set(h);
                f.get(dst)
                  .get(h)
                  .i32x4ExtendLowI16x8U()
                  .i32(16)
                  .i32x4Shl()
                  .get(two)
                  .f32x4Mul()
                  .get(sv)
                  .f32x4Mul()
                  .v128Store(32 * half);
                f.get(dst)
                  .get(h)
                  .i32x4ExtendHighI16x8U()
                  .i32(16)
                  .i32x4Shl()
                  .get(two)
                  .f32x4Mul()
                  .get(sv)
                  .f32x4Mul()
                  .v128Store(32 * half + 16);
              }
              f.get(src).i32(16).add().set(src);
              f.get(dst).i32(64).add().set(dst);
            },
          );
          whileLoop(
            f,
            () => f.get(src).get(end).ltU(),
            () => {
              f.get(src).i32Load8U().set(b);
              f.get(dst);
              f.get(b).i32(0x7f).and().i32(20).shl().get(b).i32(0x80).and().i32(24).shl().or().f32ReinterpretI32();
              f.f32c(TWO120).f32Mul().get(sc).f32Mul().f32Store();
              f.get(src).i32(1).add().set(src);
              f.get(dst).i32(4).add().set(dst);
            },
          );
          f.get(kb).i32(128).add().set(kb);
        },
      );
      f.get(r).i32(1).add().set(r);
    },
  );
}

export function genWiden(mb: ModuleBuilder): void {
  genWidenBf16(mb);
  genWidenFp8(mb);
}
