// The f32 weight GEMM with W's rows read in place: C[m0:m1, n0:n1] = A[m0:m1, :] · W[n0:n1, :]ᵀ with the
// operands' roles swapped in the micro-kernel. x's rows are packed once (B~ panels of NR tokens, every
// depth block) and each 4 x NR tile holds MR = 4 of W's rows against NR tokens: a k step broadcasts
// W[j + r, p] straight from W's stored rows and multiplies it into x~'s NR tokens at depth p. So no
// panel of W is ever packed: where a product has few rows (a routed expert's ~48 tokens of a prefill),
// packing each NR x KC panel of W — every weight element once, read cold from DRAM — was a tenth of the
// product (bench/expert-kernel-parts.ts). Each element's sum is the same as the panel order's: products
// w·x (= x·w), added from a zero accumulator in depth order within each KC block, the block's sum added
// to C's (C = sum on the first block): bitwise the same outputs.
import type { KernelConfig } from './sgemm-kernel.js';
import { addConst, addLocal, I32, minRemaining, type ModuleBuilder, V128, whileLoop } from './wasm-emitter.js';

/**
 * gemmWR_f32(m0, m1, n0, n1, k, a, rsA, csA, w, ldw, c, ldc, ws): the weight GEMM's f32 product with
 * W's rows read in place (see the module comment); x~ for all of k must fit ws (mPad * k floats, mPad
 * = m1 - m0 rounded up to NR; the caller checks). n0 is a multiple of 4; C's columns past n1 up to the
 * next multiple of 4 may be written (its row pitch holds whole NR tiles), its rows past m1 are not.
 */
export function genWeightRowsF32(mb: ModuleBuilder, cfg: KernelConfig, packB: number): number {
  const { nr: NR, kc: KC } = cfg;
  const MR = 4; // W rows a tile: one lane each of the transposed C vectors
  const NV = NR / 4;
  const [f, idx] = mb.func('gemmWR_f32', Array<typeof I32>(13).fill(I32));
  const [m0, m1, n0, n1, k, a, rsA, csA, w, ldw, c, ldc, ws] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
  const mTok = f.local(I32);
  const mPad = f.local(I32);
  const pc = f.local(I32);
  const kc = f.local(I32);
  const j = f.local(I32);
  const rowsW = f.local(I32);
  const xPc = f.local(I32);
  const t = f.local(I32);
  const left = f.local(I32);
  const pbT = f.local(I32);
  const cT = f.local(I32);
  const kb = f.local(I32);
  const kbEnd = f.local(I32);
  const kbLast = f.local(I32);
  const cr = f.local(I32);
  const wr = f.locals(I32, MR);
  const acc = Array.from({ length: MR }, () => f.locals(V128, NV));
  const b = f.locals(V128, NV);
  const av = f.local(V128);
  const tv = f.locals(V128, 4);
  const sv = f.local(V128);
  const zero = f.local(V128); // v128 locals start at zero
  const accAt = (r: number, v: number): number => (acc[r] as number[])[v] as number;

  f.get(m1).get(m0).sub().set(mTok);
  f.get(mTok)
    .i32(NR - 1)
    .add()
    .i32(-NR)
    .and()
    .set(mPad);
  // x~: depth block pc's NR-token panels at ws + pc * mPad * 4 (each kc x NR floats).
  f.i32(0).set(pc);
  whileLoop(
    f,
    () => f.get(pc).get(k).ltU(),
    () => {
      minRemaining(f, kc, KC, k, pc);
      f.get(a).get(m0).get(rsA).mul().add().get(pc).get(csA).mul().add();
      f.get(rsA).get(csA).get(mTok).get(kc);
      f.get(ws).get(pc).get(mPad).mul().i32(4).mul().add();
      f.call(packB);
      addConst(f, pc, KC);
    },
  );

  /** One k step u (0 or 1) of a rows x 4·nv tile: acc[r][v] += W[j + r, p] · x~[p, 4v .. 4v + 4). */
  const step = (u: number, rows: number, nv: number): void => {
    for (let v = 0; v < nv; v++)
      f.get(kb)
        .v128Load((u * NR + 4 * v) * 4)
        .set(b[v] as number);
    for (let r = 0; r < rows; r++) {
      f.get(wr[r] as number)
        .load32Splat(u * 4)
        .set(av);
      for (let v = 0; v < nv; v++)
        f.get(accAt(r, v))
          .get(av)
          .get(b[v] as number)
          .f32x4Mul()
          .f32x4Add()
          .set(accAt(r, v));
    }
  };

  /** The tile of W rows j .. j + rows and tokens t .. t + 4·nv (its first `left` stored) at depth block pc. */
  const tile = (rows: number, nv: number): void => {
    for (let r = 0; r < rows; r++) for (let v = 0; v < nv; v++) f.v128Zero().set(accAt(r, v));
    f.get(pbT).set(kb);
    for (let r = 0; r < rows; r++)
      f.get(w)
        .get(j)
        .i32(r)
        .add()
        .get(ldw)
        .mul()
        .add()
        .get(pc)
        .i32(4)
        .mul()
        .add()
        .set(wr[r] as number);
    f.get(kb)
      .get(kc)
      .i32(NR * 4)
      .mul()
      .add()
      .set(kbEnd);
    f.get(kbEnd)
      .i32(NR * 4)
      .sub()
      .set(kbLast);
    // Two steps a trip with the exit test between them, as sgemm-kernel's macro (kc >= 1).
    f.block().loop();
    step(0, rows, nv);
    f.get(kb).get(kbLast).eq().brIf(1);
    step(1, rows, nv);
    for (let r = 0; r < rows; r++) addConst(f, wr[r] as number, 8);
    addConst(f, kb, 2 * NR * 4);
    f.get(kb).get(kbEnd).ne().brIf(0);
    f.end().end();
    // C[t + 4v + q, j .. j + 4) = lane q of acc[0..3][v] (C (+)= on later depth blocks), rows < left.
    f.get(cT).set(cr);
    for (let v = 0; v < nv; v++) {
      const row = (r: number): number => (r < rows ? accAt(r, v) : zero);
      const [t0, t1, t2, t3] = tv as [number, number, number, number];
      f.get(row(0)).get(row(1)).shuffle32(0, 4, 1, 5).set(t0);
      f.get(row(2)).get(row(3)).shuffle32(0, 4, 1, 5).set(t1);
      f.get(row(0)).get(row(1)).shuffle32(2, 6, 3, 7).set(t2);
      f.get(row(2)).get(row(3)).shuffle32(2, 6, 3, 7).set(t3);
      const quads: [number, number, [number, number, number, number]][] = [
        [t0, t1, [0, 1, 4, 5]],
        [t0, t1, [2, 3, 6, 7]],
        [t2, t3, [0, 1, 4, 5]],
        [t2, t3, [2, 3, 6, 7]],
      ];
      for (const [q, [x0, x1, lanes]] of quads.entries()) {
        f.get(left)
          .i32(4 * v + q)
          .gtU()
          .if_();
        f.get(x0)
          .get(x1)
          .shuffle32(...lanes)
          .set(sv);
        f.get(pc).i32(0).ne().if_();
        f.get(sv).get(cr).v128Load().f32x4Add().set(sv);
        f.end();
        f.get(cr).get(sv).v128Store();
        f.end();
        addLocal(f, cr, ldc);
      }
    }
  };

  // Panel order: W's MR rows at a time, their depth blocks in turn (W's rows read front to back), every
  // NR-token panel of x~ against them (W's rows stay in L1 after the first).
  f.get(n0).set(j);
  whileLoop(
    f,
    () => f.get(j).get(n1).ltU(),
    () => {
      minRemaining(f, rowsW, MR, n1, j);
      f.i32(0).set(pc);
      whileLoop(
        f,
        () => f.get(pc).get(k).ltU(),
        () => {
          minRemaining(f, kc, KC, k, pc);
          f.get(ws).get(pc).get(mPad).mul().i32(4).mul().add().set(xPc);
          f.i32(0).set(t);
          whileLoop(
            f,
            () => f.get(t).get(mTok).ltU(),
            () => {
              f.get(xPc).get(t).get(kc).mul().i32(4).mul().add().set(pbT);
              f.get(c).get(m0).get(t).add().get(ldc).mul().add().get(j).i32(4).mul().add().set(cT);
              f.get(mTok).get(t).sub().set(left);
              // rows of W: MR, else the product's last 1 .. MR - 1; tokens: NR, else 4 when 4 or fewer are left
              for (let rows = MR; rows >= 1; rows--) {
                f.get(rowsW).i32(rows).eq().if_();
                if (NV > 1) {
                  f.get(left).i32(4).gtU().if_();
                  tile(rows, NV);
                  f.else_();
                  tile(rows, 1);
                  f.end();
                } else tile(rows, 1);
                f.end();
              }
              addConst(f, t, NR);
            },
          );
          addConst(f, pc, KC);
        },
      );
      addConst(f, j, MR);
    },
  );
  return idx;
}
