// The MoE combine's backward (training) as a WebAssembly kernel of the engine's row-kernels module, over
// dispatch-row ranges split between the calling thread and the GEMM workers: dy[r] = w[r] · g[rows[r]]
// (each an f32 product, correctly rounded) and dw[r] = <g[rows[r]], y[r]> summed in f64 in column order
// and rounded once — the JavaScript loop's operations one for one (the dot stays a serial f64 chain:
// lanes would reorder its sums), so its bits.
import { effectiveThreads, engineOwning } from './gemm/runtime.js';
import { I32, type ModuleBuilder, whileLoop } from './gemm/wasm-emitter.js';
import { f64Const, op } from './simd-rows-emit.js';

const F32 = 0x7d;
const F64 = 0x7c;
const f32DemoteF64 = 0xb6;

/**
 * combineBackwardRows(dy, dw, g, y, w, rows, n, H): byte addresses; rows of H floats; w (f32) and rows
 * (i32, token of each dispatch row) per row; n dispatch rows from these addresses.
 */
export function addCombineBackwardRows(m: ModuleBuilder): void {
  const [f] = m.func('combineBackwardRows', [I32, I32, I32, I32, I32, I32, I32, I32]);
  const [dy, dw, g, y, w, rows, n, H] = [0, 1, 2, 3, 4, 5, 6, 7];
  const [r, h, hEnd, gRow, yRow, dyRow] = f.locals(I32, 6) as [number, number, number, number, number, number];
  const wr = f.local(F32);
  const gv = f.local(F32);
  const acc = f.local(F64);
  f.get(H).i32(2).shl().set(hEnd);
  f.i32(0).set(r);
  whileLoop(
    f,
    () => f.get(r).get(n).ltU(),
    () => {
      f.get(g).get(rows).get(r).i32(2).shl().add().i32Load().get(hEnd).mul().add().set(gRow);
      f.get(y).get(r).get(hEnd).mul().add().set(yRow);
      f.get(dy).get(r).get(hEnd).mul().add().set(dyRow);
      f.get(w).get(r).i32(2).shl().add().f32Load().set(wr);
      f64Const(f, 0).set(acc);
      f.i32(0).set(h);
      whileLoop(
        f,
        () => f.get(h).get(hEnd).ltU(),
        () => {
          f.get(gRow).get(h).add().f32Load().set(gv);
          f.get(dyRow).get(h).add().get(wr).get(gv).f32Mul().f32Store();
          f.get(acc).get(gv).op(op.f64Promote);
          f.get(yRow).get(h).add().f32Load().op(op.f64Promote);
          f.op(op.f64Mul).op(op.f64Add).set(acc);
          f.get(h).i32(4).add().set(h);
        },
      );
      f.get(dw).get(r).i32(2).shl().add().get(acc).op(f32DemoteF64).f32Store();
      f.get(r).i32(1).add().set(r);
    },
  );
}

/** Fewest dispatch rows a task gets (fewer stay on the calling thread). */
const TASK_ROWS = 64;

/**
 * dy [n, H] and dw [n] of the combine out[rows[r]] += w[r] · y[r] for its gradient g [T, H], in the
 * engine's memory. Returns false without running unless every array lives in one GEMM engine's memory
 * (the caller's loop does the same operations). rows must lie in [0, T) (the forward checked them).
 */
export function combineBackwardResident(
  dy: Float32Array,
  dw: Float32Array,
  g: Float32Array,
  y: Float32Array,
  w: Float32Array,
  rows: Int32Array,
  H: number,
): boolean {
  const e = engineOwning(dy);
  if (!e || [dw, g, y, w, rows].some((a) => engineOwning(a) !== e)) return false;
  const n = rows.length;
  if (dy.length < n * H || y.length < n * H || dw.length < n || w.length < n)
    throw new RangeError(`combineBackwardResident: arrays shorter than ${n} rows of ${H}`);
  e.runRowKernels('combineBackwardRows', n, TASK_ROWS, effectiveThreads(e), (r0, r1) => [
    dy.byteOffset + r0 * H * 4,
    dw.byteOffset + r0 * 4,
    g.byteOffset,
    y.byteOffset + r0 * H * 4,
    w.byteOffset + r0 * 4,
    rows.byteOffset + r0 * 4,
    r1 - r0,
    H,
  ]);
  return true;
}
