// Products of many rows against an f32, bf16 or FP8 (E4M3, 128x128 block scales) Linear weight W [n, k]:
// the Goto/BLIS loop nest of sgemm-kernel.ts, with the B~ packing reading the stored weight and
// widening it to f32 as it packs each KC x NC block (f32: as it is; bf16: the top half of an f32; E4M3:
// the GEMV's bit trick `(b << 4) & 0x87f0` as a bf16 is the value times 2^-120, then times the block
// scale staged times 2^120: one rounding of the same product as · 2^120 · scale, see fp8-weight.ts).
// So no pass widens the whole weight and no widened copy exists: each thread widens only the
// column range it computes, into its own workspace. The widened values and the k order of the sums
// are those of widening first and running the f32 GEMM (same KC blocks, same macro-kernel), so the
// outputs are bitwise equal to that.
import { genI16WeightGemm } from './i16-weight-gemm.js';
import { emitBlockedLoops, type KernelConfig, workspaceBytes } from './sgemm-kernel.js';
import { addConst, F32, I32, minRemaining, type ModuleBuilder, V128, whileLoop } from './wasm-emitter.js';

/** E4M3 scale blocks span 128 depths; a KC block must not end inside one (see packW). */
const SCALE_BLOCK = 128;

type StoredKind = 'f32' | 'bf16' | 'fp8';
/** Bytes per stored weight element. */
export const ELEMENT_BYTES: Record<StoredKind, number> = { f32: 4, bf16: 2, fp8: 1 };

/**
 * packW_<kind>(src, ldw, count, kc, dst, s, lds, col0, p0): B~ panels of W's rows [col0, col0 + count)
 * (B's columns), depths [p0, p0 + kc): row r of W at src + r*ldw (src = address of W[col0, p0]);
 * writes ceil(count/NR) panels of kc rows of NR f32 (dst[panel][p][r]), zero-filling columns >= count.
 * FP8: scales [ceil(n/128), ceil(k/128)] at s, each times 2^120 (foldFp8Scales), with row stride lds
 * bytes; col0 is a multiple of NR and p0 of 128, so a panel's NR columns share a scale row and a scale
 * changes every 128 depths.
 */
function genPackW(mb: ModuleBuilder, kind: StoredKind, NR: number): number {
  const [f, idx] = mb.func(`packW_${kind}`, [I32, I32, I32, I32, I32, I32, I32, I32, I32]);
  const [src, ldw, count, kc, dst, s, lds, col0, p0] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const eb = ELEMENT_BYTES[kind];
  const rowBytes = NR * 4;
  const r0 = f.local(I32);
  const p = f.local(I32);
  const end = f.local(I32);
  const sp = f.locals(I32, 4);
  const d = f.local(I32);
  const sRow = f.local(I32);
  const sc = f.local(F32);
  const sv = f.local(V128);
  const zero = f.local(V128); // v128 locals start at zero
  const v = f.locals(V128, 4);
  const t = f.locals(V128, 4);
  const h = f.locals(V128, 4);
  const b = f.local(I32);
  const i = f.local(I32);
  // The i16 lanes of the first four (LOW) or last four (HIGH) i16 lanes of a vector, each moved to the
  // top half of an i32 lane: interleaved with zero (one punpcklwd / punpckhwd, where widening and
  // shifting took two or three instructions).
  const LOW = [0, 8, 1, 9, 2, 10, 3, 11];
  const HIGH = [4, 12, 5, 13, 6, 14, 7, 15];

  /** f32x4 of W[row, p .. p+4) at the address in local `at` (FP8: times the block scale sv). */
  const decode4 = (at: number): void => {
    if (kind === 'f32') {
      f.get(at).v128Load();
      return;
    }
    if (kind === 'bf16') {
      f.get(at).load16x4U().i32(16).i32x4Shl();
      return;
    }
    f.get(zero).get(at).load32Zero().i16x8ExtendLowI8x16S();
    f.i32(4).i16x8Shl().v128ConstI32(0x87f087f0, 0x87f087f0, 0x87f087f0, 0x87f087f0).v128And();
    f.shuffle16(...LOW)
      .get(sv)
      .f32x4Mul();
  };
  /** Stores the 4x4 block v (v[q] = 4 depths of column q) transposed: depth rows `row` .. row+3 at d. */
  const transposeStore = (row: number): void => {
    const [v0, v1, v2, v3] = v as [number, number, number, number];
    const [t0, t1, t2, t3] = t as [number, number, number, number];
    f.get(v0).get(v1).shuffle32(0, 4, 1, 5).set(t0);
    f.get(v2).get(v3).shuffle32(0, 4, 1, 5).set(t1);
    f.get(v0).get(v1).shuffle32(2, 6, 3, 7).set(t2);
    f.get(v2).get(v3).shuffle32(2, 6, 3, 7).set(t3);
    f.get(d)
      .get(t0)
      .get(t1)
      .shuffle32(0, 1, 4, 5)
      .v128Store(row * rowBytes);
    f.get(d)
      .get(t0)
      .get(t1)
      .shuffle32(2, 3, 6, 7)
      .v128Store((row + 1) * rowBytes);
    f.get(d)
      .get(t2)
      .get(t3)
      .shuffle32(0, 1, 4, 5)
      .v128Store((row + 2) * rowBytes);
    f.get(d)
      .get(t2)
      .get(t3)
      .shuffle32(2, 3, 6, 7)
      .v128Store((row + 3) * rowBytes);
  };
  /** f32 W[row, p] at the address in local `at` (FP8: times the block scale sc). */
  const decode1 = (at: number): void => {
    if (kind === 'f32') {
      f.get(at).f32Load();
      return;
    }
    if (kind === 'bf16') {
      f.get(at).i32Load16U().i32(16).shl().f32ReinterpretI32();
      return;
    }
    f.get(at).i32Load8U().set(b);
    f.get(b).i32(0x7f).and().i32(20).shl().get(b).i32(0x80).and().i32(24).shl().or().f32ReinterpretI32();
    f.get(sc).f32Mul();
  };
  /** end = the end of the current run of depths with one scale (FP8), or kc (f32, bf16); loads the scale. */
  const scaleRun = (): void => {
    if (kind !== 'fp8') {
      f.get(kc).set(end);
      return;
    }
    // end = min(kc, (p & ~127) + 128); p0 is a multiple of 128, so (p0 + p) >> 7 = p0 >> 7 + p >> 7.
    f.get(p).i32(-SCALE_BLOCK).and().i32(SCALE_BLOCK).add().set(end);
    f.get(end).get(kc).get(end).get(kc).ltU().select().set(end);
    f.get(sRow).get(p0).get(p).add().i32(7).shrU().i32(4).mul().add().f32Load().set(sc);
    f.get(sc).f32x4Splat().set(sv);
  };

  f.i32(0).set(r0);
  whileLoop(
    f,
    () => f.get(r0).get(count).ltU(),
    () => {
      if (kind === 'fp8') f.get(s).get(col0).get(r0).add().i32(7).shrU().get(lds).mul().add().set(sRow);
      for (let g = 0; g < NR / 4; g++) {
        const [s0, s1, s2, s3] = sp as [number, number, number, number];
        f.get(src)
          .get(r0)
          .i32(4 * g)
          .add()
          .get(ldw)
          .mul()
          .add()
          .set(s0);
        f.get(s0).get(ldw).add().set(s1);
        f.get(s1).get(ldw).add().set(s2);
        f.get(s2).get(ldw).add().set(s3);
        f.get(dst)
          .i32(16 * g)
          .add()
          .set(d);
        f.i32(0).set(p);
        // Four whole columns: 4x4 blocks decoded and transposed with shuffles.
        f.get(count)
          .get(r0)
          .sub()
          .i32(4 * g + 4)
          .geU()
          .if_();
        whileLoop(
          f,
          () => f.get(p).get(kc).ltU(),
          () => {
            scaleRun();
            // FP8: 8 depths per load (one load8x8_s sign-extends 8 codes to i16 lanes), two 4x4 blocks.
            if (kind === 'fp8')
              whileLoop(
                f,
                () => f.get(p).i32(8).add().get(end).leU(),
                () => {
                  for (let q = 0; q < 4; q++) {
                    f.get(sp[q] as number)
                      .load8x8S()
                      .i32(4)
                      .i16x8Shl();
                    f.v128ConstI32(0x87f087f0, 0x87f087f0, 0x87f087f0, 0x87f087f0)
                      .v128And()
                      .set(h[q] as number);
                  }
                  for (let half = 0; half < 2; half++) {
                    for (let q = 0; q < 4; q++)
                      f.get(zero)
                        .get(h[q] as number)
                        .shuffle16(...(half === 0 ? LOW : HIGH))
                        .get(sv)
                        .f32x4Mul()
                        .set(v[q] as number);
                    transposeStore(4 * half);
                  }
                  for (let q = 0; q < 4; q++) addConst(f, sp[q] as number, 8);
                  addConst(f, d, 8 * rowBytes);
                  addConst(f, p, 8);
                },
              );
            whileLoop(
              f,
              () => f.get(p).i32(4).add().get(end).leU(),
              () => {
                for (let q = 0; q < 4; q++) {
                  decode4(sp[q] as number);
                  f.set(v[q] as number);
                }
                transposeStore(0);
                for (let q = 0; q < 4; q++) addConst(f, sp[q] as number, 4 * eb);
                addConst(f, d, 4 * rowBytes);
                addConst(f, p, 4);
              },
            );
            // Depth tail (kc not a multiple of 4): one element per column.
            whileLoop(
              f,
              () => f.get(p).get(end).ltU(),
              () => {
                for (let q = 0; q < 4; q++) {
                  f.get(d);
                  decode1(sp[q] as number);
                  f.f32Store(4 * q);
                  addConst(f, sp[q] as number, eb);
                }
                addConst(f, d, rowBytes);
                addConst(f, p, 1);
              },
            );
          },
        );
        f.else_();
        // Ragged panel: column by column, zeros past the weight's last row.
        f.i32(0).set(i);
        whileLoop(
          f,
          () => f.get(i).i32(4).ltU(),
          () => {
            f.get(s0).get(i).get(ldw).mul().add().set(s1);
            f.get(d).get(i).i32(4).mul().add().set(s2);
            f.i32(0).set(p);
            f.get(r0)
              .i32(4 * g)
              .add()
              .get(i)
              .add()
              .get(count)
              .ltU()
              .if_();
            whileLoop(
              f,
              () => f.get(p).get(kc).ltU(),
              () => {
                scaleRun();
                whileLoop(
                  f,
                  () => f.get(p).get(end).ltU(),
                  () => {
                    f.get(s2);
                    decode1(s1);
                    f.f32Store();
                    addConst(f, s1, eb);
                    addConst(f, s2, rowBytes);
                    addConst(f, p, 1);
                  },
                );
              },
            );
            f.else_();
            whileLoop(
              f,
              () => f.get(p).get(kc).ltU(),
              () => {
                f.get(s2).f32c(0).f32Store();
                addConst(f, s2, rowBytes);
                addConst(f, p, 1);
              },
            );
            f.end();
            addConst(f, i, 1);
          },
        );
        f.end();
      }
      f.get(dst).get(kc).i32(rowBytes).mul().add().set(dst);
      addConst(f, r0, NR);
    },
  );
  return idx;
}

/**
 * B~ panels the panel order packs and multiplies at a time: the native macro-kernel's tile width (4 NR
 * panels; one panel ran it at half its vector width, ~2x slower); the wasm kernel measured the same.
 */
const PANELS_AT_ONCE = 4;

/** Floats of A~ the panel order may hold: the thread's workspace less its B~ panels at its end. */
const panelOrderCapacity = (cfg: KernelConfig): number => workspaceBytes(cfg) / 4 - PANELS_AT_ONCE * cfg.nr * cfg.kc;

/**
 * gemmW_<kind>(m0, m1, n0, n1, k, a, rsA, csA, w, ldw, c, ldc, ws, s, lds): C[m0:m1, n0:n1] =
 * A[m0:m1, :] · W[n0:n1, :]ᵀ with W [n, k] stored f32, bf16 or E4M3 (row stride ldw bytes; FP8 scales at
 * s, row stride lds bytes), packing its B~ blocks from W into the thread's workspace ws as it goes.
 * n0 is a multiple of NR; C is padded as for gemm.
 *
 * When A~ for all of k fits the workspace (beside PANELS_AT_ONCE B~ panels), the loops run panel by
 * panel: A~ is packed once for every depth block, then for each PANELS_AT_ONCE * NR columns of W and
 * each depth block in turn the panels are packed (PANELS_AT_ONCE x NR x KC floats, they stay in L1)
 * and multiplied at once. The panels' depth blocks then read W's rows front to back, which the hardware
 * prefetchers follow, where the blocked order read KC-long pieces of every row per depth block and
 * wrote the whole KC x NC block out to L2 before using it.
 * Same depth blocks, same macro-kernel, same accumulation order: the same results as the blocked order.
 */
function genWeightDriver(
  mb: ModuleBuilder,
  cfg: KernelConfig,
  kind: StoredKind,
  packA: number,
  packW: number,
  macro: number,
): void {
  const [f] = mb.func(`gemmW_${kind}`, Array<typeof I32>(15).fill(I32));
  const [m0, m1, n0, n1, k, a, rsA, csA, w, ldw, c, ldc, ws, s, lds] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
  ];
  const eb = ELEMENT_BYTES[kind];
  const { mr: MR, nr: NR, kc: KC } = cfg;
  const aCapacity = panelOrderCapacity(cfg);
  const mPad = f.local(I32);
  const pc = f.local(I32);
  const kc = f.local(I32);
  const j = f.local(I32);
  const nb = f.local(I32);
  const aPc = f.local(I32);
  const panel = f.local(I32);
  f.get(m1)
    .get(m0)
    .sub()
    .i32(MR - 1)
    .add()
    .i32(MR)
    .divU()
    .i32(MR)
    .mul()
    .set(mPad);
  // mPad * k <= aCapacity, without the product (it could wrap); k >= 1.
  f.get(mPad).i32(aCapacity).get(k).divU().leU().if_();
  f.get(ws)
    .i32(aCapacity * 4)
    .add()
    .set(panel);
  // A~ for every depth block, one after another.
  f.i32(0).set(pc);
  f.get(ws).set(aPc);
  whileLoop(
    f,
    () => f.get(pc).get(k).ltU(),
    () => {
      minRemaining(f, kc, KC, k, pc);
      f.get(a).get(m0).get(rsA).mul().add().get(pc).get(csA).mul().add();
      f.get(rsA).get(csA).get(m1).get(m0).sub().get(kc).get(aPc).call(packA);
      f.get(aPc).get(mPad).get(kc).mul().i32(4).mul().add().set(aPc);
      addConst(f, pc, KC);
    },
  );
  f.get(n0).set(j);
  whileLoop(
    f,
    () => f.get(j).get(n1).ltU(),
    () => {
      minRemaining(f, nb, NR * PANELS_AT_ONCE, n1, j);
      f.i32(0).set(pc);
      f.get(ws).set(aPc);
      whileLoop(
        f,
        () => f.get(pc).get(k).ltU(),
        () => {
          minRemaining(f, kc, KC, k, pc);
          f.get(w).get(j).get(ldw).mul().add().get(pc).i32(eb).mul().add();
          f.get(ldw).get(nb).get(kc).get(panel).get(s).get(lds).get(j).get(pc).call(packW);
          f.get(m1).get(m0).sub().get(nb).get(kc).get(aPc).get(panel);
          f.get(c).get(m0).get(ldc).mul().add().get(j).i32(4).mul().add();
          f.get(ldc).get(pc).i32(0).ne().call(macro);
          f.get(aPc).get(mPad).get(kc).mul().i32(4).mul().add().set(aPc);
          addConst(f, pc, KC);
        },
      );
      addConst(f, j, NR * PANELS_AT_ONCE);
    },
  );
  f.else_();
  emitBlockedLoops(f, cfg, { m0, m1, n0, n1, k, a, rsA, csA, c, ldc, ws }, packA, macro, ({ jc, pc, nc, kc, wsB }) => {
    f.get(w).get(jc).get(ldw).mul().add().get(pc).i32(eb).mul().add();
    f.get(ldw).get(nc).get(kc).get(wsB).get(s).get(lds).get(jc).get(pc).call(packW);
  });
  f.end();
}

/**
 * Emits packW_<kind> and the drivers gemmW_f32 / gemmW_bf16 / gemmW_fp8 (packA and macro: sgemm-kernel's),
 * and the integer route's gemmWI16_bf16 / gemmWI16_fp8 (i16-weight-gemm.ts).
 */
export function genWeightGemm(mb: ModuleBuilder, cfg: KernelConfig, packA: number, macro: number): void {
  if (cfg.kc % SCALE_BLOCK !== 0 || cfg.nc % cfg.nr !== 0 || SCALE_BLOCK % cfg.nr !== 0)
    throw new Error(`weight GEMM: kc (${cfg.kc}) must be a multiple of ${SCALE_BLOCK} and nr divide ${SCALE_BLOCK}`);
  for (const kind of ['f32', 'bf16', 'fp8'] as const)
    genWeightDriver(mb, cfg, kind, packA, genPackW(mb, kind, cfg.nr), macro);
  genI16WeightGemm(mb, cfg);
}
