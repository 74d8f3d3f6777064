// The integer weight GEMM's drivers gemmWI16_bf16 / gemmWI16_fp8: weight-gemm-kernel.ts's panel order
// (A~ for all of k, then per NR columns of W and KC depth block a B~ panel packed into L1 and
// multiplied at once), with i16 operands (i16-pack.ts) and the dot-product macro-kernel
// (i16-gemm-kernel.ts). x is quantized beforehand (packI16X), once per x: the column tasks of a
// product, and products reading the same x, share its A~.
import { A_ROW_BYTES, genI16Macro, I16_SCALE_BLOCK, i16APanelBytes } from './i16-gemm-kernel.js';
import { genPackAI16, genPackWI16 } from './i16-pack.js';
import { packI16XTask } from './i16-pack-x-task.js';
import type { KernelConfig } from './sgemm-kernel.js';
import { TASK_PACK_I16X } from './worker-pool.js';
import { addConst, I32, minRemaining, type ModuleBuilder, whileLoop } from './wasm-emitter.js';

/** The task table's weight codes of the i16 route (after gemv-kernel.ts's WEIGHT_CODE 0-2). */
export const I16_WEIGHT_CODE = { bf16: 3, fp8: 4 } as const;

/** A~ bytes one row needs for depth k (every KC block's scale headers and pairs). */
export function i16RowBytes(cfg: KernelConfig, k: number): number {
  let bytes = 0;
  for (let pc = 0; pc < k; pc += cfg.kc) bytes += i16APanelBytes(1, Math.min(cfg.kc, k - pc));
  return bytes;
}

/** Bytes of x's A~ for m rows of depth k: the KC blocks one after another, each ceil(m/MR) panels. */
export function i16PackedXBytes(cfg: KernelConfig, m: number, k: number): number {
  return Math.ceil(m / cfg.mr) * cfg.mr * i16RowBytes(cfg, k);
}

/**
 * Quantizes x (m rows of depth k, row r at byte address x + r·rsX) into A~ at dst (i16PackedXBytes
 * bytes) with the module's packAI16: what gemmWI16_<kind> reads. Once per x, however many products and
 * column tasks read it (an expert's gate and up projections).
 */
export function packI16X(
  packAI16: (...args: number[]) => void,
  cfg: KernelConfig,
  x: number,
  rsX: number,
  m: number,
  k: number,
  dst: number,
): void {
  packI16XTask(packAI16, packI16XFields(cfg, x, rsX, m, k, dst, 0, m));
}

/**
 * The fields of a task quantizing rows [r0, r1) of x (as packI16X; r0 a multiple of MR) into their
 * places in x's A~ at aq — TASK_PACK_I16X x rsX rows k kc aq r0 rowsPad scaleBlock rowBytes (x: the
 * address of row r0). Each row is quantized on its own, so the ranges' A~ are packI16X's bytes.
 */
export function packI16XFields(
  cfg: KernelConfig,
  x: number,
  rsX: number,
  m: number,
  k: number,
  aq: number,
  r0: number,
  r1: number,
): number[] {
  const rowsPad = Math.ceil(m / cfg.mr) * cfg.mr;
  return [TASK_PACK_I16X, x + r0 * rsX, rsX, r1 - r0, k, cfg.kc, aq, r0, rowsPad, I16_SCALE_BLOCK, A_ROW_BYTES];
}

/**
 * gemmWI16_<kind>(m, n0, n1, k, aq, w, ldw, c, ldc, ws, s, lds): C[0..m, n0..n1) = x · Wᵀ as gemmW_<kind>
 * (weight-gemm-kernel.ts) computes it, with x already quantized (aq: packI16X's A~ of its m rows); W's
 * B~ panels packed into the thread's workspace ws. C is overwritten.
 */
function genDriver(mb: ModuleBuilder, cfg: KernelConfig, kind: 'bf16' | 'fp8', macro: number): void {
  const packW = genPackWI16(mb, kind, cfg.nr);
  const [f] = mb.func(`gemmWI16_${kind}`, Array<typeof I32>(12).fill(I32));
  const [m, n0, n1, k, aq, w, ldw, c, ldc, ws, s, lds] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
  const eb = kind === 'bf16' ? 2 : 1;
  const { mr: MR, nr: NR, kc: KC } = cfg;
  const rowsPad = f.local(I32);
  const pc = f.local(I32);
  const kc = f.local(I32);
  const j = f.local(I32);
  const nb = f.local(I32);
  const aPc = f.local(I32);
  f.get(m)
    .i32(MR - 1)
    .add()
    .i32(-MR)
    .and()
    .set(rowsPad);
  f.get(n0).set(j);
  whileLoop(
    f,
    () => f.get(j).get(n1).ltU(),
    () => {
      minRemaining(f, nb, NR, n1, j);
      f.i32(0).set(pc);
      f.get(aq).set(aPc);
      whileLoop(
        f,
        () => f.get(pc).get(k).ltU(),
        () => {
          minRemaining(f, kc, KC, k, pc);
          f.get(w).get(j).get(ldw).mul().add().get(pc).i32(eb).mul().add();
          f.get(ldw).get(nb).get(kc).get(ws).get(s).get(lds).get(j).get(pc).call(packW);
          f.get(m).i32(NR).get(kc).get(aPc).get(ws);
          f.get(c).get(j).i32(4).mul().add();
          f.get(ldc).get(pc).i32(0).ne().call(macro);
          // past this KC block of A~: rowsPad rows of its scale blocks
          f.get(aPc).get(rowsPad).get(kc).i32(127).add().i32(7).shrU();
          f.mul()
            .i32(4 + A_ROW_BYTES)
            .mul()
            .add()
            .set(aPc);
          addConst(f, pc, KC);
        },
      );
      addConst(f, j, NR);
    },
  );
}

/** Emits packAI16, macroI16, packWI16_bf16 / _fp8 and the drivers gemmWI16_bf16 / gemmWI16_fp8. */
export function genI16WeightGemm(mb: ModuleBuilder, cfg: KernelConfig): void {
  if (cfg.kc % 128 !== 0) throw new Error(`i16 weight GEMM: kc (${cfg.kc}) must be a multiple of 128`);
  genPackAI16(mb, cfg.mr);
  const macro = genI16Macro(mb, cfg);
  genDriver(mb, cfg, 'bf16', macro);
  genDriver(mb, cfg, 'fp8', macro);
}
