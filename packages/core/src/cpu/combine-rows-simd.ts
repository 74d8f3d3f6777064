// The MoE's combine on resident rows (a prefill's expert outputs in the GEMM engine's memory) as a
// WebAssembly SIMD kernel of the engine's row-kernels module, run in place over token ranges split
// between the calling thread and the GEMM workers: out[t] = Σ_i w_i · h[order_i] over token t's
// entries i in order, each step f32(acc + w·h) from +0 (or, accumulating, from out[t] as it is: a
// combine over the experts in groups continues the sums the earlier groups began, the same steps), then
// f32(acc + s[t]) — the JavaScript loop's operations (the product of two f32 exact in f64, the sum
// rounded to f64 then f32) on f64x2 lanes, so its bits.
import { effectiveThreads, engineOwning } from './gemm/runtime.js';
import { I32, type ModuleBuilder, whileLoop } from './gemm/wasm-emitter.js';
import { load2, op, pairs, store2 } from './simd-rows-emit.js';

/**
 * combineRows(out, h, s, order, starts, w, T, H, fresh): byte addresses; rows of H floats; order (i32) and
 * w (f32) per entry, token t's entries [starts[t], starts[t + 1]) (i32); s = 0: no shared rows; fresh = 0:
 * the sums continue from out's rows (else from +0).
 */
export function addCombineRows(m: ModuleBuilder): void {
  const [f] = m.func('combineRows', [I32, I32, I32, I32, I32, I32, I32, I32, I32]);
  const [out, h, s, order, starts, w, T, H, fresh] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const [t, i, end, row, src, j, jEnd] = f.locals(I32, 7) as [number, number, number, number, number, number, number];
  const wv = f.local(0x7b);
  /** row[j] = f32(row[j] + x) for x the f64x2 pushed by `other` (over the row's pairs). */
  const accumulate = (other: (wide: boolean) => void) =>
    pairs(f, H, j, jEnd, (wide) => {
      f.get(row).get(j).add();
      f.get(row).get(j).add();
      load2(f, wide);
      other(wide);
      f.simd(op.f64x2Add);
      store2(f, wide);
    });
  f.i32(0).set(t);
  whileLoop(
    f,
    () => f.get(t).get(T).ltU(),
    () => {
      f.get(out).get(t).get(H).mul().i32(2).shl().add().set(row);
      f.get(fresh).if_();
      f.get(row).i32(0).get(H).i32(2).shl().op(0xfc, 0x0b, 0x00); // memory.fill: +0
      f.end();
      f.get(starts).get(t).i32(2).shl().add().i32Load().set(i);
      f.get(starts).get(t).i32(2).shl().add().i32Load(4).set(end);
      whileLoop(
        f,
        () => f.get(i).get(end).ltU(),
        () => {
          f.get(h).get(order).get(i).i32(2).shl().add().i32Load().get(H).mul().i32(2).shl().add().set(src);
          f.get(w).get(i).i32(2).shl().add().f32Load().op(op.f64Promote).simd(op.f64x2Splat).set(wv);
          accumulate((wide) => {
            f.get(src).get(j).add();
            load2(f, wide).get(wv).simd(op.f64x2Mul);
          });
          f.get(i).i32(1).add().set(i);
        },
      );
      f.get(s).if_();
      f.get(s).get(t).get(H).mul().i32(2).shl().add().set(src);
      accumulate((wide) => {
        f.get(src).get(j).add();
        load2(f, wide);
      });
      f.end();
      f.get(t).i32(1).add().set(t);
    },
  );
}

/** Fewest tokens a task of the combine gets (fewer stay on the calling thread). */
const TASK_TOKENS = 16;

/**
 * out [T, H] = Σ over token t's entries i in [starts[t], starts[t + 1]) of w[i] · h[order[i]] (rows of
 * H), then + s[t] (s null: none), in the engine's memory; `accumulate`: the sums start from out's rows as
 * they are, not +0 (out += ...). Returns false without running unless every array lives in one GEMM
 * engine's memory (the caller's loop does the same sums).
 */
export function combineRowsResident(
  out: Float32Array,
  h: Float32Array,
  s: Float32Array | null,
  order: Int32Array,
  starts: Int32Array,
  w: Float32Array,
  H: number,
  accumulate = false,
): boolean {
  const e = engineOwning(out);
  if (!e || [h, s ?? out, order, starts, w].some((a) => engineOwning(a) !== e)) return false;
  const T = out.length / H;
  if (!Number.isInteger(T) || starts.length < T + 1 || order.length < starts[T]! || w.length < starts[T]!)
    throw new RangeError(
      `combineRowsResident: out of ${out.length} floats is not [T, ${H}] rows, or starts (${starts.length}), order (${order.length}) and w (${w.length}) are short`,
    );
  // token ranges, a task each, shared with the GEMM workers (each token's sums stay whole: same bits)
  const rowAt = (a: Float32Array, t0: number) => a.byteOffset + t0 * H * 4;
  e.runRowKernels('combineRows', T, TASK_TOKENS, effectiveThreads(e), (t0, t1) => [
    rowAt(out, t0),
    h.byteOffset,
    s ? rowAt(s, t0) : 0,
    order.byteOffset,
    starts.byteOffset + 4 * t0,
    w.byteOffset,
    t1 - t0,
    H,
    accumulate ? 0 : 1,
  ]);
  return true;
}
