// The integer weight GEMM's drivers gemmWI16_bf16 / gemmWI16_fp8: weight-gemm-kernel.ts's panel order
// (A~ packed once for all of k, then per NR columns of W and KC depth block a B~ panel packed into L1
// and multiplied at once), with i16 operands (i16-pack.ts) and the dot-product macro-kernel
// (i16-gemm-kernel.ts). Rows go in chunks whose A~ fits the thread's workspace beside one B~ panel
// (a product past that repacks its weight panels once per chunk).
import { A_ROW_BYTES, genI16Macro, i16APanelBytes, i16PanelBytes } from './i16-gemm-kernel.js';
import { genPackAI16, genPackWI16 } from './i16-pack.js';
import type { KernelConfig } from './sgemm-kernel.js';
import { addConst, I32, minRemaining, type ModuleBuilder, whileLoop } from './wasm-emitter.js';

/** The task table's weight codes of the i16 route (after gemv-kernel.ts's WEIGHT_CODE 0-2). */
export const I16_WEIGHT_CODE = { bf16: 3, fp8: 4 } as const;

/** A~ bytes one row needs for depth k (every KC block's scale headers and pairs). */
export function i16RowBytes(cfg: KernelConfig, k: number): number {
  let bytes = 0;
  for (let pc = 0; pc < k; pc += cfg.kc) bytes += i16APanelBytes(1, Math.min(cfg.kc, k - pc));
  return bytes;
}

/** Rows per chunk of a product of depth k in a workspace of wsBytes (a multiple of MR; 0 if none fit). */
export function i16ChunkRows(cfg: KernelConfig, wsBytes: number, k: number): number {
  const room = wsBytes - i16PanelBytes(cfg.nr, cfg.kc);
  return Math.max(0, Math.floor(room / i16RowBytes(cfg, k) / cfg.mr) * cfg.mr);
}

/**
 * gemmWI16_<kind>(m0, m1, n0, n1, k, a, rsA, csA, w, ldw, c, ldc, ws, s, lds, chunk): as gemmW_<kind>
 * (weight-gemm-kernel.ts; csA must be 4) with `chunk` = i16ChunkRows(cfg, workspace bytes, k) rows per
 * chunk. C is overwritten.
 */
function genDriver(mb: ModuleBuilder, cfg: KernelConfig, kind: 'bf16' | 'fp8', packA: number, macro: number): void {
  const packW = genPackWI16(mb, kind, cfg.nr);
  const [f] = mb.func(`gemmWI16_${kind}`, Array<typeof I32>(16).fill(I32));
  // params: m0 m1 n0 n1 k a rsA csA w ldw c ldc ws s lds chunk (csA unused: 4)
  const [m0, m1, n0, n1, k, a, rsA, w, ldw, c, ldc, ws, s, lds, chunk] = [
    0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15,
  ];
  const eb = kind === 'bf16' ? 2 : 1;
  const { mr: MR, nr: NR, kc: KC } = cfg;
  const r = f.local(I32);
  const rows = f.local(I32);
  const rowsPad = f.local(I32);
  const pc = f.local(I32);
  const kc = f.local(I32);
  const j = f.local(I32);
  const nb = f.local(I32);
  const aPc = f.local(I32);
  const panel = f.local(I32);
  const cRow = f.local(I32);
  /** aPc += rowsPad * scale blocks * (4 + A_ROW_BYTES): past one KC block of the chunk's A~ */
  const nextADepthBlock = (): void => {
    f.get(aPc).get(rowsPad).get(kc).i32(127).add().i32(7).shrU();
    f.mul()
      .i32(4 + A_ROW_BYTES)
      .mul()
      .add()
      .set(aPc);
  };
  f.get(m0).set(r);
  whileLoop(
    f,
    () => f.get(r).get(m1).ltU(),
    () => {
      f.get(m1).get(r).sub().set(rows);
      f.get(rows).get(chunk).get(rows).get(chunk).ltU().select().set(rows);
      f.get(rows)
        .i32(MR - 1)
        .add()
        .i32(-MR)
        .and()
        .set(rowsPad);
      // A~ for every depth block of the chunk's rows, one after another; the B~ panel after them
      f.i32(0).set(pc);
      f.get(ws).set(aPc);
      whileLoop(
        f,
        () => f.get(pc).get(k).ltU(),
        () => {
          minRemaining(f, kc, KC, k, pc);
          f.get(a).get(r).get(rsA).mul().add().get(pc).i32(4).mul().add();
          f.get(rsA).get(rows).get(kc).get(aPc).call(packA);
          nextADepthBlock();
          addConst(f, pc, KC);
        },
      );
      f.get(aPc).set(panel);
      f.get(c).get(r).get(ldc).mul().add().set(cRow);
      f.get(n0).set(j);
      whileLoop(
        f,
        () => f.get(j).get(n1).ltU(),
        () => {
          minRemaining(f, nb, NR, n1, j);
          f.i32(0).set(pc);
          f.get(ws).set(aPc);
          whileLoop(
            f,
            () => f.get(pc).get(k).ltU(),
            () => {
              minRemaining(f, kc, KC, k, pc);
              f.get(w).get(j).get(ldw).mul().add().get(pc).i32(eb).mul().add();
              f.get(ldw).get(nb).get(kc).get(panel).get(s).get(lds).get(j).get(pc).call(packW);
              f.get(rows).i32(NR).get(kc).get(aPc).get(panel);
              f.get(cRow).get(j).i32(4).mul().add();
              f.get(ldc).get(pc).i32(0).ne().call(macro);
              nextADepthBlock();
              addConst(f, pc, KC);
            },
          );
          addConst(f, j, NR);
        },
      );
      f.get(r).get(rows).add().set(r);
    },
  );
}

/** Emits packAI16, macroI16, packWI16_bf16 / _fp8 and the drivers gemmWI16_bf16 / gemmWI16_fp8. */
export function genI16WeightGemm(mb: ModuleBuilder, cfg: KernelConfig): void {
  if (cfg.kc % 128 !== 0) throw new Error(`i16 weight GEMM: kc (${cfg.kc}) must be a multiple of 128`);
  const packA = genPackAI16(mb, cfg.mr);
  const macro = genI16Macro(mb, cfg);
  genDriver(mb, cfg, 'bf16', packA, macro);
  genDriver(mb, cfg, 'fp8', packA, macro);
}
