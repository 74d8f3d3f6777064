// The training's row scatter-add (scatterAdd along axis 0 into zeros: the backward of a row gather —
// the MoE's dispatch, an embedding) as a WebAssembly SIMD kernel of the engine's row-kernels module,
// over destination-row ranges split between the calling thread and the GEMM workers: out[d] = Σ src[j]
// over d's source rows j in index order, summed in f64 from +0 and rounded once — the JavaScript
// loop's operations (f32 widened exactly, f64 adds in the same order) on f64x2 lanes, so its bits.
import { effectiveThreads, engineOwning } from './gemm/runtime.js';
import { I32, type ModuleBuilder, whileLoop } from './gemm/wasm-emitter.js';
import { f64Const, load2, op, pairs, store2 } from './simd-rows-emit.js';

/**
 * scatterAddRows(out, src, order, first, D, H): byte addresses; rows of H floats; destination d of the
 * D gets the source rows order[first[d] .. first[d + 1]) (i32, absolute entries of order).
 */
export function addScatterAddRows(m: ModuleBuilder): void {
  const [f] = m.func('scatterAddRows', [I32, I32, I32, I32, I32, I32]);
  const [out, src, order, first, D, H] = [0, 1, 2, 3, 4, 5];
  const [d, n, start, end, row, j, jEnd] = f.locals(I32, 7) as [number, number, number, number, number, number, number];
  const acc = f.local(0x7b);
  f.i32(0).set(d);
  whileLoop(
    f,
    () => f.get(d).get(D).ltU(),
    () => {
      f.get(out).get(d).get(H).mul().i32(2).shl().add().set(row);
      f.get(first).get(d).i32(2).shl().add().i32Load().set(start);
      f.get(first).get(d).i32(2).shl().add().i32Load(4).set(end);
      // column pairs outside, the row's sources inside: each pair's sum stays in a register
      pairs(f, H, j, jEnd, (wide) => {
        f64Const(f, 0).simd(op.f64x2Splat).set(acc);
        f.get(start).set(n);
        whileLoop(
          f,
          () => f.get(n).get(end).ltU(),
          () => {
            f.get(acc);
            f.get(src).get(order).get(n).i32(2).shl().add().i32Load().get(H).mul().i32(2).shl().add().get(j).add();
            load2(f, wide);
            f.simd(op.f64x2Add).set(acc);
            f.get(n).i32(1).add().set(n);
          },
        );
        f.get(row).get(j).add().get(acc);
        store2(f, wide);
      });
      f.get(d).i32(1).add().set(d);
    },
  );
}

/** Fewest destination rows a task gets (fewer stay on the calling thread). */
const TASK_ROWS = 32;

/**
 * out [D, H] = for each destination row d, the f64 sum of src's rows order[first[d] .. first[d + 1])
 * rounded once (+0 for none), in the engine's memory. Returns false without running unless every array
 * lives in one GEMM engine's memory (the caller's loop does the same sums).
 */
export function scatterAddRowsResident(
  out: Float32Array,
  src: Float32Array,
  order: Int32Array,
  first: Int32Array,
  H: number,
): boolean {
  const e = engineOwning(out);
  if (!e || [src, order, first].some((a) => engineOwning(a) !== e)) return false;
  const D = out.length / H;
  if (!Number.isInteger(D) || first.length < D + 1 || order.length < first[D]!)
    throw new RangeError(
      `scatterAddRowsResident: out of ${out.length} floats is not [D, ${H}] rows, or first (${first.length}) and order (${order.length}) are short`,
    );
  e.runRowKernels('scatterAddRows', D, TASK_ROWS, effectiveThreads(e), (d0, d1) => [
    out.byteOffset + d0 * H * 4,
    src.byteOffset,
    order.byteOffset,
    first.byteOffset + 4 * d0,
    d1 - d0,
    H,
  ]);
  return true;
}
