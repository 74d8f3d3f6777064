// A latent cache's key rows kept a second time as the GEMM's packed B~ panels, so that the latent
// attention's score products (q · kvᵀ, q · krᵀ) read them in place (gemmPacked) instead of packing every
// cached key again in every decode step. The layout is sgemm-kernel.ts's packBAll over the whole pool of
// P rows with ldp = P floats: depth block pc (KC columns of a row, the last one narrower) starts at
// float pc·P, and in it the panel of rows [r, r + NR) (r a multiple of NR) at r·kcb holds kcb steps of
// NR floats (dst[p][r mod NR]). A row's values sit at fixed places whatever the sequence's length, so
// appending a token writes just its row, and any NR-aligned run of rows is the packed Bᵀ of those keys:
// the same floats the GEMM's own packing of them writes, so the products are the same bits.
import { DEFAULT_KERNEL } from './sgemm-kernel.js';

/** Rows per panel (the micro-tile's width): pools of whole panels, runs read from a multiple of it. */
export const PANEL_ROWS = DEFAULT_KERNEL.nr;
/** Columns per depth block of the panels (the GEMM's KC). */
export const PANEL_DEPTH = DEFAULT_KERNEL.kc;

/** The pool's key rows as panels: kv's [P, C] and kr's [P, R], each as long as its pool. */
export interface LatentKeyPanels {
  kv: Float32Array;
  kr: Float32Array;
}

/** Float index of element (row, col) in the panels of a pool of `rows` rows, `width` wide. */
function panelIndex(rows: number, width: number, row: number, col: number): number {
  const pc = col - (col % PANEL_DEPTH);
  const kcb = Math.min(PANEL_DEPTH, width - pc);
  const r = row % PANEL_ROWS;
  return pc * rows + (row - r) * kcb + (col - pc) * PANEL_ROWS + r;
}

/** Pool rows of `panels` (`width` wide), checking that the pool holds whole panels. */
function poolRows(panels: Float32Array, width: number): number {
  const rows = panels.length / width;
  if (!Number.isInteger(rows) || rows % PANEL_ROWS !== 0)
    throw new RangeError(`latent panels: ${panels.length} floats are not whole ${PANEL_ROWS}-row panels ${width} wide`);
  return rows;
}

/** panels' row rows[i] = src's row i (src [rows.length, width], row-major). */
export function writePanelRows(
  panels: Float32Array,
  width: number,
  src: ArrayLike<number>,
  rows: ArrayLike<number>,
): void {
  const P = poolRows(panels, width);
  for (let i = 0; i < rows.length; i++) {
    const s0 = i * width;
    for (let pc = 0; pc < width; pc += PANEL_DEPTH) {
      const kcb = Math.min(PANEL_DEPTH, width - pc);
      let d = panelIndex(P, width, rows[i]!, pc);
      for (let p = 0; p < kcb; p++, d += PANEL_ROWS) panels[d] = src[s0 + pc + p]!;
    }
  }
}

/** panels' row to[i] = its row from[i] (the two sets disjoint). */
export function copyPanelRows(
  panels: Float32Array,
  width: number,
  from: ArrayLike<number>,
  to: ArrayLike<number>,
): void {
  const P = poolRows(panels, width);
  for (let i = 0; i < from.length; i++)
    for (let pc = 0; pc < width; pc += PANEL_DEPTH) {
      const kcb = Math.min(PANEL_DEPTH, width - pc);
      let s = panelIndex(P, width, from[i]!, pc);
      let d = panelIndex(P, width, to[i]!, pc);
      for (let p = 0; p < kcb; p++, s += PANEL_ROWS, d += PANEL_ROWS) panels[d] = panels[s]!;
    }
}
