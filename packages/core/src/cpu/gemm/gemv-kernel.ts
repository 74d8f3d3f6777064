// Small-M products against a resident Linear weight W [N, K] (row-major, as checkpoints store it):
//   y[m, n] = Σ_k x[m, k] · W[n, k]   for n in [n0, n1), m in [0, M)
// Decode is memory-bound, so the kernel streams each weight row once: four rows at a time, every
// row of x against them while those rows are still in L1, then the next four. Weights are f32 or
// bf16 (decoded in registers: a bf16 is the top half of an f32). All pointers/strides are bytes.
//
// bf16 trick: one v128 holds 8 weights; as i32 lanes, `<< 16` yields the even-indexed ones as f32 and
// `& 0xffff0000` the odd-indexed ones. So x is handed over de-interleaved per 8-block
// ([x0 x2 x4 x6 | x1 x3 x5 x7]); the K % 8 tail stays in natural order.
import { F32, type FuncBuilder, I32, type ModuleBuilder, V128 } from './wasm-emitter.js';

export type WeightKind = 'f32' | 'bf16' | 'fp8';
/** Task-table codes of the weight kinds (runTask dispatches on them). */
export const WEIGHT_CODE: Record<WeightKind, number> = { f32: 0, bf16: 1, fp8: 2 };
/** FP8 weights: E4M3 bytes with one f32 scale per FP8_BLOCK x FP8_BLOCK block (DeepSeek-V3's format). */
export const FP8_BLOCK = 128;
/** Rows of W per block. */
const R = 4;

function whileLoop(f: FuncBuilder, cond: () => void, body: () => void): void {
  f.block().loop();
  cond();
  f.eqz().brIf(1);
  body();
  f.br(0).end().end();
}

/** Elements of K consumed per vector step. */
export const kStep = (kind: WeightKind): number => (kind === 'f32' ? 4 : 8);

/**
 * gemv_fp8(x, m, ldx, k, w, ldw, n0, n1, y, ldy, s, lds): W as E4M3 bytes, s the f32 block scales
 * (row stride lds bytes; n0 a multiple of 4, so a 4-row group shares its scale row). Decoding in
 * registers: 8 bytes load sign-extended to i16 lanes; (b << 4) & 0x87f0 is the bf16 with E4M3's sign,
 * exponent (low 4 bits of bf16's) and mantissa; as f32 (the bf16 trick above) times 2^120 it is the
 * exact E4M3 value, subnormals and zero included. Each 128-deep block's partial sums are scaled once.
 */
export function genGemvFp8(mb: ModuleBuilder, fma: boolean): void {
  const [f] = mb.func('gemv_fp8', Array<typeof I32>(12).fill(I32));
  const [x, m, ldx, k, w, ldw, n0, n1, y, ldy, s, lds] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
  const n = f.local(I32);
  const mi = f.local(I32);
  const kk = f.local(I32);
  const kb = f.local(I32); // start of the current 128-deep block
  const kEnd = f.local(I32);
  const kvEnd = f.local(I32);
  const xp = f.local(I32);
  const yp = f.local(I32);
  const sp = f.local(I32);
  const wp = f.locals(I32, R);
  const acc = f.locals(V128, R);
  const part = f.locals(V128, R);
  const tail = f.locals(F32, R);
  const ptail = f.locals(F32, R);
  const xv = f.locals(V128, 2);
  const wv = f.local(V128);
  const sv = f.local(V128);
  const b = f.local(I32);
  const TWO120 = 2 ** 120;

  const madd = (a: number, push: () => void, xi: number): void => {
    if (fma) {
      f.get(xv[xi]!);
      push();
      f.get(part[a]!).f32x4RelaxedMadd().set(part[a]!);
    } else {
      f.get(part[a]!).get(xv[xi]!);
      push();
      f.f32x4Mul().f32x4Add().set(part[a]!);
    }
  };

  const block = (rows: number): void => {
    f.get(s).get(n).i32(7).shrU().get(lds).mul().add().set(sp);
    f.i32(0).set(mi);
    whileLoop(
      f,
      () => f.get(mi).get(m).ltU(),
      () => {
        f.get(x).get(mi).get(ldx).mul().add().set(xp);
        for (let r = 0; r < rows; r++) {
          f.get(w).get(n).i32(r).add().get(ldw).mul().add().set(wp[r]!);
          f.v128Zero().set(acc[r]!);
          f.f32c(0).set(tail[r]!);
        }
        f.i32(0).set(kb);
        whileLoop(
          f,
          () => f.get(kb).get(k).ltU(),
          () => {
            // kEnd = min(kb + 128, k); kvEnd = kb + ((kEnd - kb) & ~7)
            f.get(kb).i32(FP8_BLOCK).add().get(k).get(kb).i32(FP8_BLOCK).add().get(k).ltU().select().set(kEnd);
            f.get(kb).get(kEnd).get(kb).sub().i32(-8).and().add().set(kvEnd);
            for (let r = 0; r < rows; r++) {
              f.v128Zero().set(part[r]!);
              f.f32c(0).set(ptail[r]!);
            }
            f.get(kb).set(kk);
            whileLoop(
              f,
              () => f.get(kk).get(kvEnd).ltU(),
              () => {
                f.get(xp).v128Load().set(xv[0]!);
                f.get(xp).v128Load(16).set(xv[1]!);
                for (let r = 0; r < rows; r++) {
                  f.get(wp[r]!)
                    .load8x8S()
                    .i32(4)
                    .i16x8Shl()
                    .v128ConstI32(0x87f087f0, 0x87f087f0, 0x87f087f0, 0x87f087f0)
                    .v128And()
                    .set(wv);
                  madd(r, () => f.get(wv).i32(16).i32x4Shl().f32c(TWO120).f32x4Splat().f32x4Mul(), 0);
                  madd(
                    r,
                    () =>
                      f
                        .get(wv)
                        .v128ConstI32(-65536, -65536, -65536, -65536)
                        .v128And()
                        .f32c(TWO120)
                        .f32x4Splat()
                        .f32x4Mul(),
                    1,
                  );
                  f.get(wp[r]!).i32(8).add().set(wp[r]!);
                }
                f.get(xp).i32(32).add().set(xp);
                f.get(kk).i32(8).add().set(kk);
              },
            );
            whileLoop(
              f,
              () => f.get(kk).get(kEnd).ltU(),
              () => {
                for (let r = 0; r < rows; r++) {
                  f.get(wp[r]!).i32Load8U().set(b);
                  f.get(ptail[r]!).get(xp).f32Load();
                  f.get(b)
                    .i32(0x7f)
                    .and()
                    .i32(20)
                    .shl()
                    .get(b)
                    .i32(0x80)
                    .and()
                    .i32(24)
                    .shl()
                    .or()
                    .f32ReinterpretI32()
                    .f32c(TWO120)
                    .f32Mul();
                  f.f32Mul().f32Add().set(ptail[r]!);
                  f.get(wp[r]!).i32(1).add().set(wp[r]!);
                }
                f.get(xp).i32(4).add().set(xp);
                f.get(kk).i32(1).add().set(kk);
              },
            );
            // Scale this block's partial sums (one scale for the 4-row group).
            f.get(sp).get(kb).i32(7).shrU().i32(4).mul().add().f32Load().f32x4Splat().set(sv);
            for (let r = 0; r < rows; r++) {
              f.get(acc[r]!).get(part[r]!).get(sv).f32x4Mul().f32x4Add().set(acc[r]!);
              f.get(tail[r]!).get(ptail[r]!).get(sv).f32x4ExtractLane(0).f32Mul().f32Add().set(tail[r]!);
            }
            f.get(kEnd).set(kb);
          },
        );
        f.get(y).get(mi).get(ldy).mul().add().get(n).i32(4).mul().add().set(yp);
        for (let r = 0; r < rows; r++) {
          f.get(yp);
          f.get(acc[r]!).f32x4ExtractLane(0).get(acc[r]!).f32x4ExtractLane(1).f32Add();
          f.get(acc[r]!).f32x4ExtractLane(2).get(acc[r]!).f32x4ExtractLane(3).f32Add().f32Add();
          f.get(tail[r]!).f32Add();
          f.f32Store(4 * r);
        }
        f.get(mi).i32(1).add().set(mi);
      },
    );
  };

  // Whole 4-row groups, then single rows (whose scale row is looked up per row the same way).
  f.get(n0).set(n);
  whileLoop(
    f,
    () => f.get(n).i32(R).add().get(n1).leU(),
    () => {
      block(R);
      f.get(n).i32(R).add().set(n);
    },
  );
  whileLoop(
    f,
    () => f.get(n).get(n1).ltU(),
    () => {
      block(1);
      f.get(n).i32(1).add().set(n);
    },
  );
}

/**
 * gemv_<kind>(x, m, ldx, k, w, ldw, n0, n1, y, ldy). `fma` selects relaxed-SIMD multiply-add.
 */
export function genGemv(mb: ModuleBuilder, kind: WeightKind, fma: boolean): void {
  const [f] = mb.func(`gemv_${kind}`, Array<typeof I32>(10).fill(I32));
  const [x, m, ldx, k, w, ldw, n0, n1, y, ldy] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  const n = f.local(I32);
  const mi = f.local(I32);
  const kk = f.local(I32);
  const kv = f.local(I32); // K rounded down to the vector step
  const xp = f.local(I32);
  const yp = f.local(I32);
  const wp = f.locals(I32, R);
  const acc = f.locals(V128, R);
  const tail = f.locals(F32, R);
  const xv = f.locals(V128, 2);
  const wv = f.local(V128);
  const step = kStep(kind);
  const wBytes = kind === 'f32' ? 4 : 2;

  const madd = (a: number, b: () => void, xi: number): void => {
    // acc[a] += x[xi] * (value pushed by b)
    if (fma) {
      f.get(xv[xi]!);
      b();
      f.get(acc[a]!).f32x4RelaxedMadd().set(acc[a]!);
    } else {
      f.get(acc[a]!).get(xv[xi]!);
      b();
      f.f32x4Mul().f32x4Add().set(acc[a]!);
    }
  };

  const block = (rows: number): void => {
    f.i32(0).set(mi);
    whileLoop(
      f,
      () => f.get(mi).get(m).ltU(),
      () => {
        f.get(x).get(mi).get(ldx).mul().add().set(xp);
        for (let r = 0; r < rows; r++) {
          f.get(w).get(n).i32(r).add().get(ldw).mul().add().set(wp[r]!);
          f.v128Zero().set(acc[r]!);
          f.f32c(0).set(tail[r]!);
        }
        f.i32(0).set(kk);
        whileLoop(
          f,
          () => f.get(kk).get(kv).ltU(),
          () => {
            if (kind === 'f32') {
              f.get(xp).v128Load().set(xv[0]!);
              for (let r = 0; r < rows; r++) madd(r, () => f.get(wp[r]!).v128Load(), 0);
            } else {
              f.get(xp).v128Load().set(xv[0]!);
              f.get(xp).v128Load(16).set(xv[1]!);
              for (let r = 0; r < rows; r++) {
                f.get(wp[r]!).v128Load().set(wv);
                madd(r, () => f.get(wv).i32(16).i32x4Shl(), 0);
                madd(r, () => f.get(wv).v128ConstI32(-65536, -65536, -65536, -65536).v128And(), 1);
              }
            }
            for (let r = 0; r < rows; r++)
              f.get(wp[r]!)
                .i32(step * wBytes)
                .add()
                .set(wp[r]!);
            f.get(xp)
              .i32(step * 4)
              .add()
              .set(xp);
            f.get(kk).i32(step).add().set(kk);
          },
        );
        // K tail in natural order, scalar.
        whileLoop(
          f,
          () => f.get(kk).get(k).ltU(),
          () => {
            for (let r = 0; r < rows; r++) {
              f.get(tail[r]!).get(xp).f32Load();
              if (kind === 'f32') f.get(wp[r]!).f32Load();
              else f.get(wp[r]!).i32Load16U().i32(16).shl().f32ReinterpretI32();
              f.f32Mul().f32Add().set(tail[r]!);
              f.get(wp[r]!).i32(wBytes).add().set(wp[r]!);
            }
            f.get(xp).i32(4).add().set(xp);
            f.get(kk).i32(1).add().set(kk);
          },
        );
        f.get(y).get(mi).get(ldy).mul().add().get(n).i32(4).mul().add().set(yp);
        for (let r = 0; r < rows; r++) {
          f.get(yp);
          f.get(acc[r]!).f32x4ExtractLane(0).get(acc[r]!).f32x4ExtractLane(1).f32Add();
          f.get(acc[r]!).f32x4ExtractLane(2).get(acc[r]!).f32x4ExtractLane(3).f32Add().f32Add();
          f.get(tail[r]!).f32Add();
          f.f32Store(4 * r);
        }
        f.get(mi).i32(1).add().set(mi);
      },
    );
  };

  f.get(k).get(k).i32(step).remU().sub().set(kv);
  f.get(n0).set(n);
  whileLoop(
    f,
    () => f.get(n).i32(R).add().get(n1).leU(),
    () => {
      block(R);
      f.get(n).i32(R).add().set(n);
    },
  );
  whileLoop(
    f,
    () => f.get(n).get(n1).ltU(),
    () => {
      block(1);
      f.get(n).i32(1).add().set(n);
    },
  );
}

/** x rows [m, k] (row stride k) in the layout gemv_<kind> reads, written to `dst` (row stride `ld` floats). */
export function stageX(
  kind: WeightKind,
  src: Float32Array,
  off: number,
  m: number,
  k: number,
  dst: Float32Array,
  at: number,
  ld: number,
): void {
  if (kind === 'f32') {
    for (let i = 0; i < m; i++) dst.set(src.subarray(off + i * k, off + (i + 1) * k), at + i * ld);
    return;
  }
  const kv = k - (k % 8);
  for (let i = 0; i < m; i++) {
    const s = off + i * k,
      d = at + i * ld;
    for (let j = 0; j < kv; j += 8) {
      for (let e = 0; e < 4; e++) {
        dst[d + j + e] = src[s + j + 2 * e]!;
        dst[d + j + 4 + e] = src[s + j + 2 * e + 1]!;
      }
    }
    for (let j = kv; j < k; j++) dst[d + j] = src[s + j]!;
  }
}
