// The integer weight GEMM's packing: f32 activation rows quantized into A~ panels, bf16 / FP8 weight
// rows into B~ panels (layouts and error bounds: i16-gemm-kernel.ts). One row (A) or weight row (B~'s
// column) at a time: a pass for its scale over each 128-depth block, then 8 depths per step rounded
// to i16 and narrowed (A~: one vector store, a row's depths being contiguous; B~: 4 pair words, one
// per pair row).
import { A_MAX, A_ROW_BYTES, FP8_Q_MUL, I16_SCALE_BLOCK, W_BITS } from './i16-gemm-kernel.js';
import { NATIVE_IMPORTS } from './native-kernels.js';
import { addConst, F32, type FuncBuilder, I32, type ModuleBuilder, V128, whileLoop } from './wasm-emitter.js';

/** 1.5 · 2^23: x + MAGIC rounds x to an integer (nearest, ties to even) in the low mantissa bits, |x| < 2^22. */
const MAGIC = 12582912;
const MAGIC_BITS = 0x4b400000;
const NAN_BITS = 0x7fc00000;

/**
 * Emits: v128 on the stack (4 f32) times local `mul`, rounded to the nearest integer as i32x4 (|values|
 * below 2^22; NaN lanes give an arbitrary integer, their scale is NaN).
 */
function roundTimes(f: FuncBuilder, mul: number, magic: number): void {
  f.get(mul).f32x4Mul().get(magic).f32x4Add().get(magic).i32x4Sub();
}

/** Scalar: f32 on the stack times local `mul`, rounded to an i32 as roundTimes. */
function roundTimes1(f: FuncBuilder, mul: number): void {
  f.get(mul).f32Mul().f32c(MAGIC).f32Add().i32ReinterpretF32().i32(MAGIC_BITS).sub();
}

/**
 * Stores the 8 i32 lanes of lo, hi (depths d .. d+7 of one row / column) narrowed to i16 as 4 pair
 * words, word i at local `at` + i·pairBytes.
 */
function storePairs(f: FuncBuilder, lo: number, hi: number, at: number, pairBytes: number): void {
  f.get(lo).get(hi).i16x8NarrowI32x4S().set(lo);
  for (let i = 0; i < 4; i++)
    f.get(at)
      .get(lo)
      .v128Store32Lane(i, i * pairBytes);
}

/**
 * packAI16(src, rs, count, kc, dst): A~ panels (MR rows) of rows [0, count) of A, row r at src + r·rs
 * (f32, depths contiguous), depths [0, kc); rows >= count of the last panel are zeros.
 */
export function genPackAI16(mb: ModuleBuilder, MR: number): number {
  const [f, idx] = mb.func('packAI16', [I32, I32, I32, I32, I32]);
  const [src, rs, count, kc, dst] = [0, 1, 2, 3, 4];
  const blockBytes = MR * (4 + A_ROW_BYTES);
  const r0 = f.local(I32);
  const r = f.local(I32);
  const b0 = f.local(I32);
  const len = f.local(I32);
  const q = f.local(I32);
  const row = f.local(I32);
  const hdr = f.local(I32);
  const words = f.local(I32);
  const at = f.local(I32);
  const bits = f.local(I32);
  const mx = f.local(F32);
  const inv = f.local(F32);
  const vmax = f.local(V128);
  const vinv = f.local(V128);
  const magic = f.local(V128);
  const lo = f.local(V128);
  const hi = f.local(V128);
  f.f32c(MAGIC).f32x4Splat().set(magic);

  f.i32(0).set(r0);
  whileLoop(
    f,
    () => f.get(r0).get(count).ltU(),
    () => {
      f.i32(0).set(r);
      whileLoop(
        f,
        () => f.get(r).i32(MR).ltU(),
        () => {
          f.get(dst).set(hdr);
          f.i32(0).set(b0);
          whileLoop(
            f,
            () => f.get(b0).get(kc).ltU(),
            () => {
              // len = min(128, kc - b0); words = row r's first i16 in the block
              f.get(kc).get(b0).sub().set(len);
              f.get(len).i32(I16_SCALE_BLOCK).get(len).i32(I16_SCALE_BLOCK).ltU().select().set(len);
              f.get(hdr)
                .i32(MR * 4)
                .add()
                .get(r)
                .i32(A_ROW_BYTES)
                .mul()
                .add()
                .set(words);
              f.get(r0).get(r).add().get(count).ltU().if_();
              f.get(src).get(r0).get(r).add().get(rs).mul().add().get(b0).i32(4).mul().add().set(row);
              // max |x| over the block as the largest magnitude's bits (integer max of the bits with the
              // sign cleared: one instruction where f32x4.max's NaN rules take several); a NaN or an
              // infinity gives bits >= 0x7f800000, i.e. a non-finite max
              f.v128Zero().set(vmax);
              f.i32(0).set(q);
              whileLoop(
                f,
                () => f.get(q).i32(4).add().get(len).leU(),
                () => {
                  f.get(vmax).get(row).get(q).i32(4).mul().add().v128Load();
                  f.v128ConstI32(0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff).v128And().i32x4MaxS().set(vmax);
                  addConst(f, q, 4);
                },
              );
              f.get(vmax).get(vmax).get(vmax).shuffle32(2, 3, 0, 1).i32x4MaxS().set(vmax);
              f.get(vmax).get(vmax).get(vmax).shuffle32(1, 0, 3, 2).i32x4MaxS().i32x4ExtractLane(0).set(bits);
              whileLoop(
                f,
                () => f.get(q).get(len).ltU(),
                () => {
                  f.get(row).get(q).i32(4).mul().add().i32Load().i32(0x7fffffff).and().set(at);
                  f.get(at).get(bits).get(at).get(bits).gtS().select().set(bits);
                  addConst(f, q, 1);
                },
              );
              f.get(bits).f32ReinterpretI32().set(mx);
              // scale = max / A_MAX (NaN when max is NaN or infinite), inv = A_MAX / max (0 for a zero block)
              f.get(hdr).get(r).i32(4).mul().add();
              f.get(mx).f32c(A_MAX).f32Div().i32(NAN_BITS).f32ReinterpretI32();
              f.get(mx).get(mx).f32Sub().f32c(0).f32Eq().select().f32Store();
              f.f32c(A_MAX).get(mx).f32Div().f32c(0).get(mx).f32c(0).f32Gt().select().set(inv);
              f.get(inv).f32x4Splat().set(vinv);
              // 8 depths per step, then one at a time
              f.i32(0).set(q);
              f.get(words).set(at);
              whileLoop(
                f,
                () => f.get(q).i32(8).add().get(len).leU(),
                () => {
                  f.get(row)
                    .v128Load()
                    .apply(() => roundTimes(f, vinv, magic))
                    .set(lo);
                  f.get(row)
                    .v128Load(16)
                    .apply(() => roundTimes(f, vinv, magic))
                    .set(hi);
                  f.get(at).get(lo).get(hi).i16x8NarrowI32x4S().v128Store();
                  addConst(f, row, 32);
                  addConst(f, at, 16);
                  addConst(f, q, 8);
                },
              );
              whileLoop(
                f,
                () => f.get(q).get(len).ltU(),
                () => {
                  f.get(words).get(q).i32(2).mul().add();
                  f.get(row)
                    .f32Load()
                    .apply(() => roundTimes1(f, inv))
                    .i32Store16();
                  addConst(f, row, 4);
                  addConst(f, q, 1);
                },
              );
              // an odd block: the last pair's second depth is zero
              f.get(len).i32(1).and().if_();
              f.get(words).get(len).i32(2).mul().add().i32(0).i32Store16();
              f.end();
              f.else_();
              // a row past count: scale and words zero
              f.get(hdr).get(r).i32(4).mul().add().i32(0).i32Store();
              f.i32(0).set(q);
              whileLoop(
                f,
                () => f.get(q).get(len).ltU(),
                () => {
                  f.get(words).get(q).i32(2).mul().add().i32(0).i32Store();
                  addConst(f, q, 2);
                },
              );
              f.end();
              addConst(f, hdr, blockBytes);
              addConst(f, b0, I16_SCALE_BLOCK);
            },
          );
          addConst(f, r, 1);
        },
      );
      f.get(hdr).set(dst);
      addConst(f, r0, MR);
    },
  );
  return idx;
}

/**
 * packWI16_<kind>(src, ldw, count, kc, dst, s, lds, col0, p0): B~ panels (NR columns) of W's rows
 * [col0, col0 + count) (B's columns), depths [p0, p0 + kc): row r of W at src + r·ldw (src = the address
 * of W[col0, p0]); columns >= count of the last panel are zeros. FP8: the block scales as the f32 weight
 * GEMM stages them (times 2^120, [ceil(n/128), ceil(k/128)] at s, row stride lds bytes); p0 is a multiple
 * of 128.
 */
export function genPackWI16(mb: ModuleBuilder, kind: 'bf16' | 'fp8', NR: number): number {
  const native = kind === 'bf16' ? NATIVE_IMPORTS.i16PackWBf16 : NATIVE_IMPORTS.i16PackWFp8;
  if (mb.imports.includes(native)) return genNativePackWI16(mb, kind, native.name);
  const [f, idx] = mb.func(`packWI16_${kind}`, [I32, I32, I32, I32, I32, I32, I32, I32, I32]);
  const [src, ldw, count, kc, dst, s, lds, col0, p0] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const eb = kind === 'bf16' ? 2 : 1;
  const pairBytes = NR * 4;
  const r0 = f.local(I32);
  const c = f.local(I32);
  const b0 = f.local(I32);
  const len = f.local(I32);
  const q = f.local(I32);
  const col = f.local(I32);
  const hdr = f.local(I32);
  const words = f.local(I32);
  const at = f.local(I32);
  const e = f.local(I32);
  const mult = f.local(F32);
  const vmult = f.local(V128);
  const vmax = f.local(V128);
  const magic = f.local(V128);
  const zero = f.local(V128); // v128 locals start at zero
  const h = f.local(V128);
  const lo = f.local(V128);
  const hi = f.local(V128);
  const LOW = [0, 8, 1, 9, 2, 10, 3, 11];
  const HIGH = [4, 12, 5, 13, 6, 14, 7, 15];
  f.f32c(MAGIC).f32x4Splat().set(magic);

  /** The weight's bf16 bits of 8 depths at `col` (FP8: E4M3 as a bf16 of its value times 2^-120, see fp8-weight.ts). */
  const load8 = (from: number): void => {
    if (kind === 'bf16') f.get(from).v128Load();
    else
      f.get(from).load8x8S().i32(4).i16x8Shl().v128ConstI32(0x87f087f0, 0x87f087f0, 0x87f087f0, 0x87f087f0).v128And();
  };
  /** The f32 value of one depth at `col` (bf16: the weight; FP8: times 2^-120). */
  const load1 = (): void => {
    if (kind === 'bf16') f.get(col).i32Load16U();
    else f.get(col).i32Load8S().i32(4).shl().i32(0x87f0).and();
    f.i32(16).shl().f32ReinterpretI32();
  };

  /** The column scale of column `c` (at `col`) stored at hdr + 4c; its multiplier in mult / vmult. */
  const scaleOf = (): void => {
    f.get(hdr).get(c).i32(4).mul().add();
    if (kind === 'bf16') {
      // e = the biased exponent of the block's max |w| (by its bits: 255 for NaN / Inf)
      f.v128Zero().set(vmax);
      f.i32(0).set(q);
      whileLoop(
        f,
        () => f.get(q).i32(8).add().get(len).leU(),
        () => {
          f.get(vmax).get(col).get(q).i32(2).mul().add().v128Load();
          f.v128ConstI32(0x7fff7fff, 0x7fff7fff, 0x7fff7fff, 0x7fff7fff).v128And().i16x8MaxU().set(vmax);
          addConst(f, q, 8);
        },
      );
      for (const lanes of [
        [4, 5, 6, 7, 0, 1, 2, 3],
        [2, 3, 0, 1, 2, 3, 0, 1],
        [1, 0, 1, 0, 1, 0, 1, 0],
      ])
        f.get(vmax)
          .get(vmax)
          .get(vmax)
          .shuffle16(...lanes)
          .i16x8MaxU()
          .set(vmax);
      f.get(vmax).i16x8ExtractLaneU(0).set(e);
      whileLoop(
        f,
        () => f.get(q).get(len).ltU(),
        () => {
          f.get(col).get(q).i32(2).mul().add().i32Load16U().i32(0x7fff).and().set(at);
          f.get(at).get(e).get(at).get(e).gtU().select().set(e);
          addConst(f, q, 1);
        },
      );
      f.get(e).i32(7).shrU().set(e);
      // column scale 2^(E-G) (NaN for a NaN / Inf), multiplier 2^(G-E), G = W_BITS - 1; E clamped at
      // -113 so both stay normal (a block that small rounds to zeros either way)
      f.get(e).i32(255).eq().set(at);
      f.get(e).i32(14).get(e).i32(14).gtU().select().set(e);
      f.i32(NAN_BITS)
        .get(e)
        .i32(W_BITS - 1)
        .sub()
        .i32(23)
        .shl()
        .get(at)
        .select()
        .f32ReinterpretI32()
        .f32Store();
      f.i32(254 + W_BITS - 1)
        .get(e)
        .sub()
        .i32(23)
        .shl()
        .f32ReinterpretI32()
        .set(mult);
    } else {
      // column scale s / FP8_Q_MUL: the staged scale (s · 2^120) times 2^-120 / FP8_Q_MUL; the
      // multiplier 2^120 · FP8_Q_MUL makes a decoded q · 2^-120 into q · FP8_Q_MUL
      f.get(s).get(col0).get(r0).add().get(c).add().i32(7).shrU().get(lds).mul().add();
      f.get(p0).get(b0).add().i32(7).shrU().i32(4).mul().add().f32Load();
      f.f32c(2 ** -120 / FP8_Q_MUL)
        .f32Mul()
        .f32Store();
      f.f32c(2 ** 120 * FP8_Q_MUL).set(mult);
    }
    f.get(mult).f32x4Splat().set(vmult);
  };
  /** Depths q .. len of the column at `col` one at a time, its words at `words`; an odd block's padding zero. */
  const tail = (): void => {
    whileLoop(
      f,
      () => f.get(q).get(len).ltU(),
      () => {
        f.get(words).get(q).i32(1).shrU().i32(pairBytes).mul().add().get(q).i32(1).and().i32(2).mul().add();
        load1();
        roundTimes1(f, mult);
        f.i32Store16();
        addConst(f, col, eb);
        addConst(f, q, 1);
      },
    );
    f.get(len).i32(1).and().if_();
    f.get(words).get(len).i32(1).shrU().i32(pairBytes).mul().add().i32(0).i32Store16(2);
    f.end();
  };

  const colp = f.locals(I32, 4);
  const mults = f.locals(F32, 4);
  const vm = f.locals(V128, 4);
  const v = f.locals(V128, 4);
  const t = f.locals(V128, 4);
  const qVec = f.local(I32);
  /** The 4x4 words of v (v[c] = pairs q .. q+3 of column c) transposed: pair row i at `at` + i·pairBytes. */
  const storeTransposed = (): void => {
    const [v0, v1, v2, v3] = v as [number, number, number, number];
    const [t0, t1, t2, t3] = t as [number, number, number, number];
    f.get(v0).get(v1).shuffle32(0, 4, 1, 5).set(t0);
    f.get(v2).get(v3).shuffle32(0, 4, 1, 5).set(t1);
    f.get(v0).get(v1).shuffle32(2, 6, 3, 7).set(t2);
    f.get(v2).get(v3).shuffle32(2, 6, 3, 7).set(t3);
    for (const [i, a, b, lanes] of [
      [0, t0, t1, [0, 1, 4, 5]],
      [1, t0, t1, [2, 3, 6, 7]],
      [2, t2, t3, [0, 1, 4, 5]],
      [3, t2, t3, [2, 3, 6, 7]],
    ] as const)
      f.get(at)
        .get(a)
        .get(b)
        .shuffle32(lanes[0], lanes[1], lanes[2], lanes[3])
        .v128Store(i * pairBytes);
  };
  /**
   * A whole panel, 4 columns at a time: their scales, then 8 depths of each per step, narrowed and stored
   * as 4 pair rows of 4 words (one vector store each, where a column alone takes 4 lane stores).
   */
  const wholePanel = (): void => {
    f.get(dst).set(hdr);
    f.i32(0).set(b0);
    whileLoop(
      f,
      () => f.get(b0).get(kc).ltU(),
      () => {
        f.get(kc).get(b0).sub().set(len);
        f.get(len).i32(I16_SCALE_BLOCK).get(len).i32(I16_SCALE_BLOCK).ltU().select().set(len);
        for (let g = 0; g < NR / 4; g++) {
          for (let c4 = 0; c4 < 4; c4++) {
            f.i32(4 * g + c4).set(c);
            f.get(src).get(r0).get(c).add().get(ldw).mul().add().get(b0).i32(eb).mul().add().set(col);
            scaleOf();
            f.get(col).set(colp[c4] as number);
            f.get(mult).set(mults[c4] as number);
            f.get(vmult).set(vm[c4] as number);
          }
          f.i32(0).set(q);
          f.get(hdr)
            .i32(pairBytes + 16 * g)
            .add()
            .set(at);
          whileLoop(
            f,
            () => f.get(q).i32(8).add().get(len).leU(),
            () => {
              for (let c4 = 0; c4 < 4; c4++) {
                const cp = colp[c4] as number;
                load8(cp);
                f.set(h);
                f.get(zero)
                  .get(h)
                  .shuffle16(...LOW)
                  .apply(() => roundTimes(f, vm[c4] as number, magic))
                  .set(lo);
                f.get(zero)
                  .get(h)
                  .shuffle16(...HIGH)
                  .apply(() => roundTimes(f, vm[c4] as number, magic))
                  .set(hi);
                f.get(lo)
                  .get(hi)
                  .i16x8NarrowI32x4S()
                  .set(v[c4] as number);
                addConst(f, cp, 8 * eb);
              }
              storeTransposed();
              addConst(f, at, 4 * pairBytes);
              addConst(f, q, 8);
            },
          );
          f.get(q).set(qVec);
          for (let c4 = 0; c4 < 4; c4++) {
            f.get(qVec).set(q);
            f.get(colp[c4] as number).set(col);
            f.get(mults[c4] as number).set(mult);
            f.get(hdr)
              .i32(pairBytes + 4 * (4 * g + c4))
              .add()
              .set(words);
            tail();
          }
        }
        f.get(hdr).i32(pairBytes).add().get(len).i32(1).add().i32(1).shrU().i32(pairBytes).mul().add().set(hdr);
        addConst(f, b0, I16_SCALE_BLOCK);
      },
    );
  };

  f.i32(0).set(r0);
  whileLoop(
    f,
    () => f.get(r0).get(count).ltU(),
    () => {
      f.get(r0).i32(NR).add().get(count).leU().if_();
      wholePanel();
      f.else_();
      f.i32(0).set(c);
      whileLoop(
        f,
        () => f.get(c).i32(NR).ltU(),
        () => {
          f.get(dst).set(hdr);
          f.i32(0).set(b0);
          whileLoop(
            f,
            () => f.get(b0).get(kc).ltU(),
            () => {
              f.get(kc).get(b0).sub().set(len);
              f.get(len).i32(I16_SCALE_BLOCK).get(len).i32(I16_SCALE_BLOCK).ltU().select().set(len);
              f.get(hdr).i32(pairBytes).add().get(c).i32(4).mul().add().set(words);
              f.get(r0).get(c).add().get(count).ltU().if_();
              f.get(src).get(r0).get(c).add().get(ldw).mul().add().get(b0).i32(eb).mul().add().set(col);
              scaleOf();
              f.i32(0).set(q);
              f.get(words).set(at);
              whileLoop(
                f,
                () => f.get(q).i32(8).add().get(len).leU(),
                () => {
                  load8(col);
                  f.set(h);
                  f.get(zero)
                    .get(h)
                    .shuffle16(...LOW)
                    .apply(() => roundTimes(f, vmult, magic))
                    .set(lo);
                  f.get(zero)
                    .get(h)
                    .shuffle16(...HIGH)
                    .apply(() => roundTimes(f, vmult, magic))
                    .set(hi);
                  storePairs(f, lo, hi, at, pairBytes);
                  addConst(f, col, 8 * eb);
                  addConst(f, at, 4 * pairBytes);
                  addConst(f, q, 8);
                },
              );
              tail();
              f.else_();
              f.get(hdr).get(c).i32(4).mul().add().i32(0).i32Store();
              f.i32(0).set(q);
              whileLoop(
                f,
                () => f.get(q).get(len).ltU(),
                () => {
                  f.get(words).get(q).i32(1).shrU().i32(pairBytes).mul().add().i32(0).i32Store();
                  addConst(f, q, 2);
                },
              );
              f.end();
              f.get(hdr).i32(pairBytes).add().get(len).i32(1).add().i32(1).shrU().i32(pairBytes).mul().add().set(hdr);
              addConst(f, b0, I16_SCALE_BLOCK);
            },
          );
          addConst(f, c, 1);
        },
      );
      f.end();
      f.get(hdr).set(dst);
      addConst(f, r0, NR);
    },
  );
  return idx;
}

/**
 * packWI16_<kind> as a call to the native one (native/i16-gemm.cc: the same quantization step for step,
 * so the same bytes), passing the memory's current size in pages for its bounds checks.
 */
function genNativePackWI16(mb: ModuleBuilder, kind: 'bf16' | 'fp8', name: string): number {
  const [f, idx] = mb.func(`packWI16_${kind}`, Array<typeof I32>(9).fill(I32));
  for (let i = 0; i < 9; i++) f.get(i);
  f.memorySize().call(mb.importIndex(name));
  return idx;
}
