// The integer weight GEMM: products of many f32 rows against bf16 / FP8 weights with both operands
// quantized to i16 and the products summed by i32x4.dot_i16x8_s (pmaddwd on x64: 8 multiply-adds per
// instruction, where the f32 kernel's mul + add pair does 4). Same loop nest and 4x8 register tile as
// sgemm-kernel.ts's macro-kernel, the panel order of weight-gemm-kernel.ts.
//
// Packed layouts, per KC depth block (kc depths, split into 128-depth scale blocks, each padded with a
// zero to an even depth so depths pair up):
//   A~ panel (MR rows): per scale block, MR f32 row scales, then per row its i16s in depth order, each
//     row A_ROW_BYTES long (a whole block's; a shorter last block leaves the rest unread), so a row's
//     pair word (depths 2q, 2q+1: low and high half) lies at r·A_ROW_BYTES + 4q and the quantizing pass
//     stores 8 depths of a row with one vector store.
//   B~ panel (NR cols): per scale block, NR f32 column scales, then per depth pair NR such words.
// An element's value is its i16 times its scale. A tile's i32 sums cover at most FLUSH_DEPTHS depths of
// one scale block, then are converted, scaled by row scale · column scale and added to C.
//
// Quantization (what the results are within). The bits go to the activations: with |a| < 2^13 and
// |w| ≤ 2^12, 64 depths still fit an i32 (below), and the activations' grid is what the error is made of
// (bench/prefill-activations-accuracy.ts, V3-mini bf16, median of 8 prompts: x on the old 12-bit grid
// alone moved the logits 7.0e-3, the whole route 6.9e-3; on a 14-bit grid 2.6e-3), while bf16 weights
// carry 8 significant bits and E4M3 4, which a 12-bit grid keeps near each block's max.
//   activations (packAI16): per row and scale block, scale = max|x| / A_MAX, a = round(x / scale), so
//     |a| ≤ A_MAX = 8191 and |x − a·scale| ≤ scale/2 = max|x| / 16382 (relative to the block's max).
//   bf16 weights: per column and scale block a power of two 2^(E−11), E the exponent of the block's
//     max|w|, so |w| / 2^(E−11) < 2^12: elements within 2^4 of the max (|w| ≥ 2^(E−4)) are exact (8
//     significant bits), smaller ones round on the 2^(E−11) grid, an error ≤ 2^(E−12) ≤ max|w| · 2^-12.
//   FP8 E4M3 weights: w = q · s (s the 128x128 block scale); q · FP8_Q_MUL (8) is an integer for |q| ≥ 1
//     (exact) and |q · 8| ≤ 448 · 8 = 3584; smaller q round on a 1/8 grid, an error ≤ s/16 (≤ 2^-13 of
//     the largest |w| a block can hold, 448·s). Column scale s/8.
//   A row block with a NaN or infinite x gets a NaN scale, a column block of bf16 weights with one a
//     NaN scale: every output those reach is NaN (never hidden as a finite value).
//
// Overflow bound (why FLUSH_DEPTHS = 64): |a| ≤ 8191 and |w| ≤ W_MAX = 2^12, so one product is at most
// 8191 · 4096 = 33,550,336 < 2^25 and 64 of them sum to at most 2,147,221,504 < 2^31 − 1 =
// 2,147,483,647: no i32 lane can wrap. The flush's conversion of a sum to f32 rounds it once (2^-24).
import { NATIVE_IMPORTS } from './native-kernels.js';
import { addConst, addLocal, I32, type ModuleBuilder, V128, whileLoop } from './wasm-emitter.js';

/** Depths sharing one scale per row of A~ / per column of B~. */
export const I16_SCALE_BLOCK = 128;
/** Depths summed in i32 between flushes to f32 (the overflow bound above). */
export const FLUSH_DEPTHS = 64;
/** Largest |quantized activation|: 13 bits plus sign. */
export const A_MAX = 8191;
/** Bits of a bf16 weight's column grid: 2^(E − (W_BITS − 1)) for the block max's exponent E. */
export const W_BITS = 12;
/** Largest |quantized weight|. */
export const W_MAX = 1 << W_BITS;
/** An E4M3 code value q is packed as q · FP8_Q_MUL (integer for |q| ≥ 1; |448 · 8| < W_MAX). */
export const FP8_Q_MUL = 8;

export interface I16TileConfig {
  mr: number;
  nr: number;
}

/** Bytes of one row's i16s in an A~ scale block. */
export const A_ROW_BYTES = I16_SCALE_BLOCK * 2;

/** Bytes of a B~ panel (R = NR columns) of kc depths. */
export function i16PanelBytes(R: number, kc: number): number {
  return (Math.ceil(kc / I16_SCALE_BLOCK) + Math.ceil(kc / 2)) * R * 4;
}

/** Bytes of an A~ panel (R = MR rows) of kc depths. */
export function i16APanelBytes(R: number, kc: number): number {
  return Math.ceil(kc / I16_SCALE_BLOCK) * R * (4 + A_ROW_BYTES);
}

/**
 * macroI16(mc, nc, kc, pa, pb, c, ldc, accumulate): C[mc, nc] (+)= A~ · B~ for one KC block of kc depths;
 * pa: ceil(mc/MR) A~ panels, pb: ceil(nc/NR) B~ panels (layouts above), C row stride ldc bytes and
 * padded to whole NR columns. A last panel of fewer than MR rows runs a tile of its rows only.
 */
export function genI16Macro(mb: ModuleBuilder, cfg: I16TileConfig): number {
  if (mb.imports.includes(NATIVE_IMPORTS.i16Macro)) return genNativeI16Macro(mb);
  const { mr: MR, nr: NR } = cfg;
  if (NR % 4 !== 0) throw new Error(`macroI16: nr (${NR}) must be a multiple of 4`);
  const NV = NR / 4;
  const [f, idx] = mb.func('macroI16', [I32, I32, I32, I32, I32, I32, I32, I32]);
  const [mc, nc, kc, pa, pb, c, ldc, accum] = [0, 1, 2, 3, 4, 5, 6, 7];
  const j = f.local(I32);
  const i = f.local(I32);
  const pbj = f.local(I32);
  const cj = f.local(I32);
  const pai = f.local(I32);
  const cij = f.local(I32);
  const ka = f.local(I32);
  const kb = f.local(I32);
  const kaEnd = f.local(I32);
  const kbEnd = f.local(I32);
  const kaLast = f.local(I32);
  const hA = f.local(I32);
  const hB = f.local(I32);
  const p = f.local(I32);
  const bEnd = f.local(I32);
  const cEnd = f.local(I32);
  const cr = f.local(I32);
  const strideA = f.local(I32);
  const strideB = f.local(I32);
  const acc = Array.from({ length: MR }, () => f.locals(V128, NV));
  const b = f.locals(V128, NV);
  const av = f.local(V128);
  const sa = f.local(V128);
  const accAt = (r: number, v: number): number => (acc[r] as number[])[v] as number;

  /** One depth pair of a tile of `rows` rows. */
  const step = (u: number, rows: number): void => {
    for (let v = 0; v < NV; v++)
      f.get(kb)
        .v128Load((u * NR + 4 * v) * 4)
        .set(b[v] as number);
    for (let r = 0; r < rows; r++) {
      f.get(ka)
        .load32Splat(r * A_ROW_BYTES + u * 4)
        .set(av);
      for (let v = 0; v < NV; v++)
        f.get(accAt(r, v))
          .get(av)
          .get(b[v] as number)
          .i32x4DotI16x8S()
          .i32x4Add()
          .set(accAt(r, v));
    }
  };

  /** C[r][v] += f32(acc[r][v]) · (row scale r · column scales v), the scales at hA / hB. */
  const flush = (rows: number): void => {
    for (let v = 0; v < NV; v++)
      f.get(hB)
        .v128Load(16 * v)
        .set(b[v] as number);
    f.get(cij).set(cr);
    for (let r = 0; r < rows; r++) {
      f.get(hA)
        .load32Splat(4 * r)
        .set(sa);
      for (let v = 0; v < NV; v++)
        f.get(cr)
          .get(cr)
          .v128Load(16 * v)
          .get(accAt(r, v))
          .f32x4ConvertI32x4S()
          .get(sa)
          .get(b[v] as number)
          .f32x4Mul()
          .f32x4Mul()
          .f32x4Add()
          .v128Store(16 * v);
      addLocal(f, cr, ldc);
    }
  };

  const tile = (rows: number): void => {
    // Not accumulating: C starts at zero (every flush adds).
    f.get(accum).eqz().if_();
    f.get(cij).set(cr);
    for (let r = 0; r < rows; r++) {
      for (let v = 0; v < NV; v++)
        f.get(cr)
          .v128Zero()
          .v128Store(16 * v);
      addLocal(f, cr, ldc);
    }
    f.end();
    f.get(pai).set(ka);
    f.get(pbj).set(kb);
    f.i32(0).set(p);
    whileLoop(
      f,
      () => f.get(p).get(kc).ltU(),
      () => {
        // A scale block: its scales, then its pairs in chunks of FLUSH_DEPTHS.
        f.get(ka).set(hA);
        f.get(kb).set(hB);
        addConst(f, ka, MR * 4);
        addConst(f, kb, NR * 4);
        f.get(p).i32(I16_SCALE_BLOCK).add().set(bEnd);
        f.get(bEnd).get(kc).get(bEnd).get(kc).ltU().select().set(bEnd);
        whileLoop(
          f,
          () => f.get(p).get(bEnd).ltU(),
          () => {
            f.get(p).i32(FLUSH_DEPTHS).add().set(cEnd);
            f.get(cEnd).get(bEnd).get(cEnd).get(bEnd).ltU().select().set(cEnd);
            for (let r = 0; r < rows; r++) for (let v = 0; v < NV; v++) f.v128Zero().set(accAt(r, v));
            // pairs in the chunk: (cEnd - p + 1) >> 1 (>= 1)
            f.get(cEnd).get(p).sub().i32(1).add().i32(1).shrU().set(kaLast);
            f.get(kb)
              .get(kaLast)
              .i32(NR * 4)
              .mul()
              .add()
              .set(kbEnd);
            f.get(ka).get(kaLast).i32(4).mul().add().set(kaEnd);
            f.get(kaEnd).i32(4).sub().set(kaLast);
            // Two pairs per trip with the exit test between them (see sgemm-kernel.ts's macro: it keeps
            // TurboFan from hoisting the second pair's loads above the first's arithmetic).
            f.block().loop();
            step(0, rows);
            f.get(ka).get(kaLast).eq().brIf(1);
            step(1, rows);
            addConst(f, ka, 2 * 4);
            addConst(f, kb, 2 * NR * 4);
            f.get(ka).get(kaEnd).ne().brIf(0);
            f.end().end();
            f.get(kaEnd).set(ka);
            f.get(kbEnd).set(kb);
            flush(rows);
            f.get(cEnd).set(p);
          },
        );
        // the next block's A~ header: past the MR rows of this one
        f.get(hA)
          .i32(MR * (4 + A_ROW_BYTES))
          .add()
          .set(ka);
      },
    );
  };

  // Panel strides: B~, (scale blocks + pairs) words per column; A~, whole blocks of MR rows.
  f.get(kc)
    .i32(I16_SCALE_BLOCK - 1)
    .add()
    .i32(7)
    .shrU()
    .get(kc)
    .i32(1)
    .add()
    .i32(1)
    .shrU()
    .add()
    .set(strideA);
  f.get(strideA)
    .i32(NR * 4)
    .mul()
    .set(strideB);
  f.get(kc)
    .i32(I16_SCALE_BLOCK - 1)
    .add()
    .i32(7)
    .shrU()
    .i32(MR * (4 + A_ROW_BYTES))
    .mul()
    .set(strideA);
  f.i32(0).set(j);
  f.get(pb).set(pbj);
  f.get(c).set(cj);
  whileLoop(
    f,
    () => f.get(j).get(nc).ltU(),
    () => {
      f.i32(0).set(i);
      f.get(pa).set(pai);
      f.get(cj).set(cij);
      whileLoop(
        f,
        () => f.get(i).i32(MR).add().get(mc).leU(),
        () => {
          tile(MR);
          addConst(f, i, MR);
          addLocal(f, pai, strideA);
          f.get(cij).get(ldc).i32(MR).mul().add().set(cij);
        },
      );
      for (let rows = 1; rows < MR; rows++) {
        f.get(mc).get(i).sub().i32(rows).eq().if_();
        tile(rows);
        f.end();
      }
      addConst(f, j, NR);
      addLocal(f, pbj, strideB);
      addConst(f, cj, NR * 4);
    },
  );
  return idx;
}

/**
 * macroI16 as a call to the native one (native/i16-gemm.cc: the same sums and float steps at AVX-512
 * width, so the same bits), passing the memory's current size in pages for its bounds checks.
 */
function genNativeI16Macro(mb: ModuleBuilder): number {
  const [f, idx] = mb.func('macroI16', Array<typeof I32>(8).fill(I32));
  for (let i = 0; i < 8; i++) f.get(i);
  f.memorySize().call(mb.importIndex(NATIVE_IMPORTS.i16Macro.name));
  return idx;
}
