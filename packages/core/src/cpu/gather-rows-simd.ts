// The MoE's gather of token rows in dispatch order (out[r] = x[rows[r]]) as a kernel of the engine's
// row-kernels module, run in place over row ranges split between the calling thread and the GEMM
// workers: a prefill's normed hidden states are a kernel output in the engine's memory, and the
// gathered rows are the experts' weight products' x there, so neither side is staged.
import { effectiveThreads, engineOwning } from './gemm/runtime.js';
import { I32, type ModuleBuilder, whileLoop } from './gemm/wasm-emitter.js';

/** gatherRows(out, x, rows, n, rowBytes): byte addresses; out's row r = x's row rows[r] (i32) for r < n. */
export function addGatherRows(m: ModuleBuilder): void {
  const [f] = m.func('gatherRows', [I32, I32, I32, I32, I32]);
  const [out, x, rows, n, rowBytes] = [0, 1, 2, 3, 4];
  const end = f.local(I32);
  f.get(rows).get(n).i32(2).shl().add().set(end);
  whileLoop(
    f,
    () => f.get(rows).get(end).ltU(),
    () => {
      f.get(out);
      f.get(x).get(rows).i32Load().get(rowBytes).mul().add();
      f.get(rowBytes).op(0xfc, 0x0a, 0x00, 0x00); // memory.copy
      f.get(out).get(rowBytes).add().set(out);
      f.get(rows).i32(4).add().set(rows);
    },
  );
}

/** Fewest rows a task of the gather gets (fewer stay on the calling thread). */
const TASK_ROWS = 64;

/**
 * out [n, H] = the rows rows[0..n) of x [·, H], in the engine's memory. Returns false without copying
 * unless every array lives in one GEMM engine's memory (the caller copies the rows itself); a row
 * index outside x is a RangeError.
 */
export function gatherRowsResident(out: Float32Array, x: Float32Array, rows: Int32Array, H: number): boolean {
  const e = engineOwning(out);
  if (!e || engineOwning(x) !== e || engineOwning(rows) !== e) return false;
  const n = rows.length;
  const T = x.length / H;
  if (out.length !== n * H || !Number.isInteger(T))
    throw new RangeError(`gatherRowsResident: out of ${out.length} floats for ${n} rows of ${H}, x of ${x.length}`);
  for (let r = 0; r < n; r++)
    if (!(rows[r]! >= 0 && rows[r]! < T)) throw new RangeError(`gatherRowsResident: row ${rows[r]} of x's ${T}`);
  e.runRowKernels('gatherRows', n, TASK_ROWS, effectiveThreads(e), (r0, r1) => [
    out.byteOffset + r0 * H * 4,
    x.byteOffset,
    rows.byteOffset + r0 * 4,
    r1 - r0,
    H * 4,
  ]);
  return true;
}
