// Cross-entropy's per-row passes (train-kernels.ts's crossEntropy and crossEntropyBackward on f32 logits)
// as WebAssembly SIMD kernels of the GEMM engine's row-kernels module, over row ranges split between the
// calling thread and the GEMM workers. The JavaScript kernels ran a Math.max loop, vector-exp.ts's exp
// through its private page and an f64 sum loop per row; here the same operations in the same order, so
// their bits:
//   crossEntropyRows          m = max_j x[j] (max is exact and order-free: NaN and ±0 alike in Math.max
//                             and f32.max); e_j = exp(f32(f32(x_j · 1) + (−m))) — vector-exp.ts's
//                             exp(scale 1, shift −m), operation for operation; z = Σ_j e_j in j's order
//                             (f64, from +0). The caller takes lse = m + log z and the loss in JavaScript.
//   crossEntropyBackwardRows  dx_j = f32(g · exp(f32(f32(x_j · 1) + (−lse)))) (a product of two f32 is
//                             exact in f64, so one f32 rounding, as `gn * dx[j]` stored in a Float32Array).
//                             The caller subtracts g at the target and zeroes ignored rows.
// A row's last V mod 4 floats go through the exp as one vector whose other lanes are 0 (exp is lane by
// lane), and only their lanes are summed or stored: nothing past a row is read or written.
import { effectiveThreads, hasSimd } from './gemm/runtime.js';
import { F32, F64, type FuncBuilder, I32, type ModuleBuilder, V128, whileLoop } from './gemm/wasm-emitter.js';
import type { WasmGemm } from './gemm/wasm-engine.js';
import { placeSpans, residentEngine } from './engine-operands.js';
import { op } from './simd-rows-emit.js';
import { emitExpF32x4 } from './vector-exp.js';

/**
 * How a pass splits over the engine's threads: tasks of at least `taskRows` rows, the workers woken only
 * for a pass of at least `wakeFloats` logits (below it, split only while they are awake).
 */
export const CROSS_ENTROPY_SPLIT = { taskRows: 16, wakeFloats: 1 << 17 };

const f32x4ReplaceLane = (f: FuncBuilder, lane: number): FuncBuilder => {
  f.simd(0x20).code.byte(lane);
  return f;
};

/**
 * Loads the row's last `rem` (1–3) floats from byte address `at` into lanes 0..rem−1 of local `v` (the
 * others 0); emits nothing usable when rem is 0, so callers test rem first.
 */
function loadTail(f: FuncBuilder, at: number, rem: number, v: number): void {
  f.v128ConstI32(0, 0, 0, 0).set(v);
  for (let lane = 0; lane < 3; lane++) {
    f.get(rem).i32(lane).gtU().if_();
    f.get(v)
      .get(at)
      .f32Load(4 * lane);
    f32x4ReplaceLane(f, lane).set(v);
    f.end();
  }
}

/** p = exp(f32(f32(x · 1) + shift)) for the f32x4 in local x, vector-exp.ts's `exp` export's steps. */
function shiftedExp(f: FuncBuilder, x: number, shift: number, t: [number, number, number], p: number): void {
  const [arg, n, r] = t;
  f.get(x).f32c(1).f32x4Splat().f32x4Mul();
  f.get(shift).f32x4Add().set(arg);
  emitExpF32x4(f, arg, n, r, p);
}

/** crossEntropyRows(x, rows, V, mAt, zAt): rows of V floats from byte address x; m (f32) and z (f64) per row. */
function addForward(m: ModuleBuilder): void {
  const [f] = m.func('crossEntropyRows', [I32, I32, I32, I32, I32]);
  const [X, rows, V, mAt, zAt] = [0, 1, 2, 3, 4];
  const [i, row, j, vend, rem] = f.locals(I32, 5) as [number, number, number, number, number];
  const [mx, shift, x, p, arg, n, r] = f.locals(V128, 7) as [number, number, number, number, number, number, number];
  const mf = f.local(F32);
  const z = f.local(F64);
  const addLane = (lane: number) => {
    f.get(z).get(p).f32x4ExtractLane(lane).op(op.f64Promote);
    f.op(op.f64Add).set(z);
  };
  f.get(V).i32(-4).and().i32(2).shl().set(vend);
  f.get(V).i32(3).and().set(rem);
  f.i32(0).set(i);
  whileLoop(
    f,
    () => f.get(i).get(rows).ltU(),
    () => {
      f.get(X).get(i).get(V).mul().i32(2).shl().add().set(row);
      // m: whole vectors, their lanes, then the tail one float at a time
      f.f32c(Number.NEGATIVE_INFINITY).f32x4Splat().set(mx);
      f.i32(0).set(j);
      whileLoop(
        f,
        () => f.get(j).get(vend).ltU(),
        () => {
          f.get(mx).get(row).get(j).add().v128Load().f32x4Max().set(mx);
          f.get(j).i32(16).add().set(j);
        },
      );
      f.get(mx).f32x4ExtractLane(0).get(mx).f32x4ExtractLane(1).f32Max();
      f.get(mx).f32x4ExtractLane(2).f32Max().get(mx).f32x4ExtractLane(3).f32Max().set(mf);
      whileLoop(
        f,
        () => f.get(j).get(V).i32(2).shl().ltU(),
        () => {
          f.get(mf).get(row).get(j).add().f32Load().f32Max().set(mf);
          f.get(j).i32(4).add().set(j);
        },
      );
      f.get(mf).op(0x8c).f32x4Splat().set(shift); // f32.neg: −m exactly
      // z = Σ exp in j's order
      f.op(0x44, ...new Uint8Array(8)).set(z); // f64.const +0
      f.i32(0).set(j);
      whileLoop(
        f,
        () => f.get(j).get(vend).ltU(),
        () => {
          f.get(row).get(j).add().v128Load().set(x);
          shiftedExp(f, x, shift, [arg, n, r], p);
          for (let lane = 0; lane < 4; lane++) addLane(lane);
          f.get(j).i32(16).add().set(j);
        },
      );
      f.get(rem).if_();
      f.get(row).get(vend).add().set(j);
      loadTail(f, j, rem, x);
      shiftedExp(f, x, shift, [arg, n, r], p);
      for (let lane = 0; lane < 3; lane++) {
        f.get(rem).i32(lane).gtU().if_();
        addLane(lane);
        f.end();
      }
      f.end();
      f.get(mAt).get(i).i32(2).shl().add().get(mf).f32Store();
      f.get(zAt).get(i).i32(3).shl().add().get(z).op(op.f64Store).code.u32(3).u32(0);
      f.get(i).i32(1).add().set(i);
    },
  );
}

/** crossEntropyBackwardRows(x, lse, g, rows, V, dx): rows of V floats; lse and g one f32 per row. */
function addBackward(m: ModuleBuilder): void {
  const [f] = m.func('crossEntropyBackwardRows', [I32, I32, I32, I32, I32, I32]);
  const [X, lse, G, rows, V, DX] = [0, 1, 2, 3, 4, 5];
  const [i, row, out, j, vend, rem] = f.locals(I32, 6) as [number, number, number, number, number, number];
  const [shift, gn, x, p, arg, n, r] = f.locals(V128, 7) as [number, number, number, number, number, number, number];
  f.get(V).i32(-4).and().i32(2).shl().set(vend);
  f.get(V).i32(3).and().set(rem);
  f.i32(0).set(i);
  whileLoop(
    f,
    () => f.get(i).get(rows).ltU(),
    () => {
      f.get(i).get(V).mul().i32(2).shl().set(j);
      f.get(X).get(j).add().set(row);
      f.get(DX).get(j).add().set(out);
      f.get(lse).get(i).i32(2).shl().add().f32Load().op(0x8c).f32x4Splat().set(shift);
      f.get(G).get(i).i32(2).shl().add().f32Load().f32x4Splat().set(gn);
      f.i32(0).set(j);
      whileLoop(
        f,
        () => f.get(j).get(vend).ltU(),
        () => {
          f.get(row).get(j).add().v128Load().set(x);
          shiftedExp(f, x, shift, [arg, n, r], p);
          f.get(out).get(j).add().get(gn).get(p).f32x4Mul().v128Store();
          f.get(j).i32(16).add().set(j);
        },
      );
      f.get(rem).if_();
      f.get(row).get(vend).add().set(j);
      loadTail(f, j, rem, x);
      shiftedExp(f, x, shift, [arg, n, r], p);
      f.get(gn).get(p).f32x4Mul().set(p);
      f.get(out).get(vend).add().set(j);
      for (let lane = 0; lane < 3; lane++) {
        f.get(rem).i32(lane).gtU().if_();
        f.get(j)
          .get(p)
          .f32x4ExtractLane(lane)
          .f32Store(4 * lane);
        f.end();
      }
      f.end();
      f.get(i).i32(1).add().set(i);
    },
  );
}

/** Both kernels (into the engine's row-kernels module: attention-rows-simd.ts). */
export function addCrossEntropyRows(m: ModuleBuilder): void {
  addForward(m);
  addBackward(m);
}

/** The threads and per-task rows of a pass over `rows` rows of V logits on engine e. */
function split(e: WasmGemm, rows: number, V: number): { threads: number; taskRows: number } {
  const threads = e.rowJobThreads(effectiveThreads(e), rows * V, CROSS_ENTROPY_SPLIT.wakeFloats);
  const tasks = Math.max(1, Math.min(2 * threads, Math.floor(rows / CROSS_ENTROPY_SPLIT.taskRows)));
  return { threads, taskRows: Math.ceil(rows / tasks) };
}

/**
 * Per row of x [rows, V] (f32): m = its maximum and z = Σ exp(x − m) in order (see the header), into m and
 * z. Runs when x lives in a GEMM engine's memory (false otherwise, or without SIMD128: nothing written).
 */
export function crossEntropyRowsSimd(x: Float32Array, V: number, m: Float32Array, z: Float64Array): boolean {
  const rows = m.length;
  if (z.length !== rows || x.length !== rows * V)
    throw new RangeError(
      `crossEntropyRowsSimd: x has ${x.length} floats, not ${rows} rows of ${V}, or z is not [${rows}]`,
    );
  const e = hasSimd() ? residentEngine(x) : null;
  const placed = e && rows > 0 && placeSpans(e, [{ array: x, offset: 0, length: x.length }], [], rows * 12 + 16);
  if (!e || !placed) return false;
  const zAt = placed.block;
  const mAt = zAt + rows * 8;
  const xAt = placed.at[0]!;
  const { threads, taskRows } = split(e, rows, V);
  e.runRowKernels('crossEntropyRows', rows, taskRows, threads, (r0, r1) => [
    xAt + 4 * V * r0,
    r1 - r0,
    V,
    mAt + 4 * r0,
    zAt + 8 * r0,
  ]);
  const heap = e.heap();
  z.set(new Float64Array(heap.buffer, zAt, rows));
  m.set(heap.subarray(mAt / 4, mAt / 4 + rows));
  return true;
}

/**
 * dx [rows, V] = g · exp(x − lse) per row (see the header; the target's −g and ignored rows are the
 * caller's). Runs when one of x, lse, g and dx lives in a GEMM engine's memory (the others copied in, dx
 * back out); false otherwise, or without SIMD128 (nothing written).
 */
export function crossEntropyBackwardRowsSimd(
  x: Float32Array,
  lse: Float32Array,
  g: Float32Array,
  V: number,
  dx: Float32Array,
): boolean {
  const rows = lse.length;
  if (g.length !== rows || x.length !== rows * V || dx.length !== x.length)
    throw new RangeError(
      `crossEntropyBackwardRowsSimd: x (${x.length}) and dx (${dx.length}) must be ${rows} rows of ${V}, g (${g.length}) one per row`,
    );
  if (!hasSimd() || rows === 0) return false;
  let e: WasmGemm | null = null;
  for (const a of [dx, x, lse, g]) e ??= residentEngine(a);
  const span = (array: Float32Array) => ({ array, offset: 0, length: array.length });
  const placed = e && placeSpans(e, [span(x), span(lse), span(g)], [span(dx)], 0);
  if (!e || !placed) return false;
  const [xAt, lseAt, gAt, dxAt] = placed.at as [number, number, number, number];
  const { threads, taskRows } = split(e, rows, V);
  e.runRowKernels('crossEntropyBackwardRows', rows, taskRows, threads, (r0, r1) => [
    xAt + 4 * V * r0,
    lseAt + 4 * r0,
    gAt + 4 * r0,
    r1 - r0,
    V,
    dxAt + 4 * V * r0,
  ]);
  placed.copyOut(dx.length);
  return true;
}
