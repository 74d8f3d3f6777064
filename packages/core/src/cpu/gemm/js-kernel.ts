// Pure-JS blocked GEMM: the fallback when WebAssembly SIMD is unavailable. Transposed operands are
// materialised row-major first so the hot loop is always the unit-stride "C row += a * B row" form,
// four C rows at a time, blocked on K and N to keep the B block cache-resident. Operands and C with a
// row pitch (lda / ldb / ldc) go through dense copies, so the sums are those of the dense product.
import type { Gemm } from './args.js';
import { copyOf } from '../../dtype.js';
import { sameMemory } from './runtime.js';

const KB = 128;
const NB = 512;

/** Row-major [rows, cols] copy of the matrix stored as [cols, rows] at `off`, its rows `ld` apart. */
function transposed(src: Float32Array, off: number, rows: number, cols: number, ld: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let c = 0; c < cols; c++) {
    const s = off + c * ld;
    for (let r = 0; r < rows; r++) out[r * cols + c] = src[s + r] as number;
  }
  return out;
}

/** Dense row-major copy of [rows, cols] stored at `off` with rows `ld` apart. */
function packed(src: Float32Array, off: number, rows: number, cols: number, ld: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) out.set(src.subarray(off + r * ld, off + r * ld + cols), r * cols);
  return out;
}

/** A view (or copy, when transposed, pitched or aliasing C) of op(X) as row-major [rows, cols]. */
function operand(
  x: Float32Array,
  off: number,
  trans: boolean,
  rows: number,
  cols: number,
  ld: number,
  c: Float32Array,
): Float32Array {
  if (trans) return transposed(x, off, rows, cols, ld);
  if (ld !== cols) return packed(x, off, rows, cols, ld);
  const view = x.subarray(off, off + rows * cols);
  // C may overlap it
  return sameMemory(x, c) ? copyOf(view) : view;
}

function gemmOne(A: Float32Array, B: Float32Array, C: Float32Array, m: number, n: number, k: number): void {
  C.fill(0);
  for (let j0 = 0; j0 < n; j0 += NB) {
    const j1 = Math.min(n, j0 + NB);
    for (let p0 = 0; p0 < k; p0 += KB) {
      const p1 = Math.min(k, p0 + KB);
      let i = 0;
      for (; i + 4 <= m; i += 4) {
        const c0 = i * n,
          c1 = c0 + n,
          c2 = c1 + n,
          c3 = c2 + n;
        for (let p = p0; p < p1; p++) {
          const a0 = A[i * k + p] as number;
          const a1 = A[(i + 1) * k + p] as number;
          const a2 = A[(i + 2) * k + p] as number;
          const a3 = A[(i + 3) * k + p] as number;
          const bo = p * n;
          for (let j = j0; j < j1; j++) {
            const bv = B[bo + j] as number;
            C[c0 + j] = (C[c0 + j] as number) + a0 * bv;
            C[c1 + j] = (C[c1 + j] as number) + a1 * bv;
            C[c2 + j] = (C[c2 + j] as number) + a2 * bv;
            C[c3 + j] = (C[c3 + j] as number) + a3 * bv;
          }
        }
      }
      for (; i < m; i++) {
        const c0 = i * n;
        for (let p = p0; p < p1; p++) {
          const a0 = A[i * k + p] as number;
          const bo = p * n;
          for (let j = j0; j < j1; j++) C[c0 + j] = (C[c0 + j] as number) + a0 * (B[bo + j] as number);
        }
      }
    }
  }
}

export function sgemmJs(g: Gemm): void {
  const { m, n, k } = g;
  let lastA = -1,
    lastB = -1;
  let A: Float32Array = new Float32Array(0);
  let B: Float32Array = new Float32Array(0);
  let C: Float32Array | undefined;
  for (let t = 0; t < g.batch; t++) {
    const aOff = g.aOffset + t * g.strideA;
    const bOff = g.bOffset + t * g.strideB;
    // Broadcast operands (stride 0) are materialised once.
    if (aOff !== lastA) {
      A = operand(g.a, aOff, g.transA, m, k, g.lda, g.c);
      lastA = aOff;
    }
    if (bOff !== lastB) {
      B = operand(g.b, bOff, g.transB, k, n, g.ldb, g.c);
      lastB = bOff;
    }
    const cOff = g.cOffset + t * g.strideC;
    if (g.ldc === n) gemmOne(A, B, g.c.subarray(cOff, cOff + m * n), m, n, k);
    else {
      // A pitched C is computed dense, then written row by row (what lies between its rows is kept).
      C ??= new Float32Array(m * n);
      gemmOne(A, B, C, m, n, k);
      for (let i = 0; i < m; i++) g.c.set(C.subarray(i * n, (i + 1) * n), cOff + i * g.ldc);
    }
  }
}
