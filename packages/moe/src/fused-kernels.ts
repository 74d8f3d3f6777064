// CPU kernels of the two fused ops around the grouped GEMMs (registered in register.ts), forward
// and backward: swiglu h = silu(g) · u, and the weighted scatter-add of the combine step.
import {
  combineBackwardResident,
  combineRowsResident,
  CpuStorage,
  expF32,
  F32WorkArrays,
  swigluBackwardF32,
  swigluF32,
  takeF32,
  type Kernel,
  type KernelTensor,
} from '@dsv3/core';
import { sortByToken } from './experts-cpu';

export const SWIGLU_OP = 'moe.swiglu';
export const SWIGLU_BACKWARD_OP = 'moe.swigluBackward';
export const COMBINE_OP = 'moe.weightedScatterAdd';
export const COMBINE_BACKWARD_OP = 'moe.weightedScatterAddBackward';

type F = Float32Array | Float64Array;
const data = (t: KernelTensor): F => (t.storage as CpuStorage).data as F;
// f32 outputs from core's free list (the backward hands dead gradient buffers back to it), which may
// hold stale values: every kernel here writes all of its output (the combine zeroes its own first).
const alloc = (t: KernelTensor, n: number): F => (t.dtype === 'f64' ? new Float64Array(n) : takeF32(n));
const wrap = (t: KernelTensor, shape: number[], d: F): KernelTensor => ({
  storage: new CpuStorage(d),
  shape,
  dtype: t.dtype,
});

/** out = e^-x elementwise (f32: core's vectorized exp; f64: Math.exp). */
function expNeg(x: F, out: F): void {
  if (x instanceof Float32Array && out instanceof Float32Array) expF32(x, 0, out, 0, x.length, -1);
  else for (let i = 0; i < x.length; i++) out[i] = Math.exp(-x[i]!);
}

export const swigluCpu: Kernel = (_b, [g, u]) => {
  const G = data(g!);
  const U = data(u!);
  const H = alloc(g!, G.length);
  // f32: core's SIMD kernel, the loop below operation for operation, unless SIMD128 is missing
  if (G instanceof Float32Array && U instanceof Float32Array && H instanceof Float32Array && swigluF32(G, U, H))
    return [wrap(g!, [...g!.shape], H)];
  expNeg(G, H);
  for (let i = 0; i < G.length; i++) H[i] = (G[i]! / (1 + H[i]!)) * U[i]!;
  return [wrap(g!, [...g!.shape], H)];
};

// dg = dh · u · σ(g)(1 + g(1 − σ(g))),  du = dh · silu(g)
export const swigluBackwardCpu: Kernel = (_b, [dh, g, u]) => {
  const D = data(dh!);
  const G = data(g!);
  const U = data(u!);
  const dG = alloc(g!, G.length);
  const dU = alloc(g!, G.length);
  const f32 = [D, G, U, dG, dU].every((a) => a instanceof Float32Array);
  if (
    f32 &&
    swigluBackwardF32(D as Float32Array, G as Float32Array, U as Float32Array, dG as Float32Array, dU as Float32Array)
  )
    return [wrap(g!, [...g!.shape], dG), wrap(g!, [...g!.shape], dU)];
  expNeg(G, dG);
  for (let i = 0; i < G.length; i++) {
    const x = G[i]!;
    const s = 1 / (1 + dG[i]!);
    const d = D[i]!;
    dG[i] = d * U[i]! * s * (1 + x * (1 - s));
    dU[i] = d * x * s;
  }
  return [wrap(g!, [...g!.shape], dG), wrap(g!, [...g!.shape], dU)];
};

// The operands both combine kernels read: y [N, H], w [N], rows [N].
const combineArgs = (y: KernelTensor, w: KernelTensor, rows: KernelTensor) => ({
  Y: data(y),
  W: data(w),
  R: (rows.storage as CpuStorage).data as Int32Array,
  N: y.shape[0]!,
  H: y.shape[1]!,
});

// The combine's token order (order, starts, weights per entry) in the GEMM engine's memory, kept from
// step to step, for core's SIMD combine.
const combineWork = new F32WorkArrays(true);
const asInt32 = (a: Float32Array) => new Int32Array(a.buffer, a.byteOffset, a.length);

export const combineCpu: Kernel<{ T: number }> = (_b, [y, w, rows], { T }) => {
  const { Y, W, R, N, H } = combineArgs(y!, w!, rows!);
  for (let r = 0; r < N; r++) {
    const t = R[r]!;
    if (!(t >= 0 && t < T)) throw new RangeError(`${COMBINE_OP}: row ${r} targets token ${t}, outside [0, ${T})`);
  }
  const out = alloc(y!, T * H);
  // f32 rows in the engine's memory: core's SIMD combine, token ranges shared with the GEMM workers —
  // each token's rows in ascending r, each step f32(acc + w·y) from +0: the loop's sums, so its bits
  if (Y instanceof Float32Array && W instanceof Float32Array && out instanceof Float32Array && T > 1) {
    const order = asInt32(combineWork.take(0, N)),
      starts = asInt32(combineWork.take(1, T + 1)),
      wt = combineWork.take(2, N);
    sortByToken(R, T, order, starts);
    for (let i = 0; i < N; i++) wt[i] = W[order[i]!]!;
    if (combineRowsResident(out, Y, null, order, starts, wt, H)) return [wrap(y!, [T, H], out)];
  }
  out.fill(0);
  for (let r = 0; r < N; r++) {
    const wr = W[r]!;
    const o = R[r]! * H;
    const s = r * H;
    for (let h = 0; h < H; h++) out[o + h]! += wr * Y[s + h]!;
  }
  return [wrap(y!, [T, H], out)];
};

// dy[r] = w[r] · g[rows[r]],  dw[r] = <g[rows[r]], y[r]>
export const combineBackwardCpu: Kernel = (_b, [g, y, w, rows]) => {
  const G = data(g!);
  const { Y, W, R, N, H } = combineArgs(y!, w!, rows!);
  const dY = alloc(y!, N * H);
  const dW = alloc(y!, N);
  // f32 rows in the engine's memory: core's kernel on both threads, the loop's operations (w and the
  // rows, small host arrays, copied beside them first)
  if (
    G instanceof Float32Array &&
    Y instanceof Float32Array &&
    W instanceof Float32Array &&
    dY instanceof Float32Array
  ) {
    const wR = combineWork.take(3, N),
      rowsR = asInt32(combineWork.take(4, N)),
      dwR = combineWork.take(5, N);
    wR.set(W.subarray(0, N));
    rowsR.set(R.subarray(0, N));
    if (combineBackwardResident(dY, dwR, G, Y, wR, rowsR, H)) {
      dW.set(dwR);
      return [wrap(y!, [N, H], dY), wrap(y!, [N], dW)];
    }
  }
  for (let r = 0; r < N; r++) {
    const o = R[r]! * H;
    const s = r * H;
    const wr = W[r]!;
    let acc = 0;
    for (let h = 0; h < H; h++) {
      const gv = G[o + h]!;
      dY[s + h] = wr * gv;
      acc += gv * Y[s + h]!;
    }
    dW[r] = acc;
  }
  return [wrap(y!, [N, H], dY), wrap(y!, [N], dW)];
};
