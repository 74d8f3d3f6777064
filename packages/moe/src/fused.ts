// Two small fused CPU kernels around the grouped GEMMs, each with its backward attached by record():
//   swiglu(g, u)                       h = silu(g) · u                       (one pass instead of three)
//   weightedScatterAdd(y, w, rows, T)  out[rows[r]] += w[r] · y[r], out [T, H] (scale + scatter-add in one)
// Both fall back to the same math from core ops (and core's autograd) on other backends and dtypes,
// or when forced with impl 'composed'.
import {
  full,
  hasKernel,
  indexAdd,
  mul,
  record,
  registerKernel,
  reshape,
  runKernel,
  silu,
  Tensor,
  CpuStorage,
  type Backend,
  type Kernel,
  type KernelTensor,
} from '@dsv3/core';
import type { GroupedImpl } from './grouped';

export const SWIGLU_OP = 'moe.swiglu';
export const SWIGLU_BACKWARD_OP = 'moe.swigluBackward';
export const COMBINE_OP = 'moe.weightedScatterAdd';
export const COMBINE_BACKWARD_OP = 'moe.weightedScatterAddBackward';

type F = Float32Array | Float64Array;
const data = (t: KernelTensor): F => (t.storage as CpuStorage).data as F;
const alloc = (t: KernelTensor, n: number): F => (t.dtype === 'f64' ? new Float64Array(n) : new Float32Array(n));
const wrap = (t: KernelTensor, shape: number[], d: F): KernelTensor => ({ storage: new CpuStorage(d), shape, dtype: t.dtype });

const swigluCpu: Kernel = (_b, [g, u]) => {
  const G = data(g!);
  const U = data(u!);
  const H = alloc(g!, G.length);
  for (let i = 0; i < G.length; i++) {
    const x = G[i]!;
    H[i] = (x / (1 + Math.exp(-x))) * U[i]!;
  }
  return [wrap(g!, [...g!.shape], H)];
};

// dg = dh · u · σ(g)(1 + g(1 − σ(g))),  du = dh · silu(g)
const swigluBackwardCpu: Kernel = (_b, [dh, g, u]) => {
  const D = data(dh!);
  const G = data(g!);
  const U = data(u!);
  const dG = alloc(g!, G.length);
  const dU = alloc(g!, G.length);
  for (let i = 0; i < G.length; i++) {
    const x = G[i]!;
    const s = 1 / (1 + Math.exp(-x));
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

const combineCpu: Kernel<{ T: number }> = (_b, [y, w, rows], { T }) => {
  const { Y, W, R, N, H } = combineArgs(y!, w!, rows!);
  const out = alloc(y!, T * H);
  for (let r = 0; r < N; r++) {
    const t = R[r]!;
    if (!(t >= 0 && t < T)) throw new RangeError(`${COMBINE_OP}: row ${r} targets token ${t}, outside [0, ${T})`);
    const wr = W[r]!;
    const o = t * H;
    const s = r * H;
    for (let h = 0; h < H; h++) out[o + h]! += wr * Y[s + h]!;
  }
  return [wrap(y!, [T, H], out)];
};

// dy[r] = w[r] · g[rows[r]],  dw[r] = <g[rows[r]], y[r]>
const combineBackwardCpu: Kernel = (_b, [g, y, w, rows]) => {
  const G = data(g!);
  const { Y, W, R, N, H } = combineArgs(y!, w!, rows!);
  const dY = alloc(y!, N * H);
  const dW = alloc(y!, N);
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

let registered = false;
function ensureRegistered(): void {
  if (registered) return;
  registered = true;
  const add = (op: string, k: Kernel): void => {
    if (!hasKernel(op, 'cpu')) registerKernel(op, 'cpu', k);
  };
  add(SWIGLU_OP, swigluCpu);
  add(SWIGLU_BACKWARD_OP, swigluBackwardCpu);
  add(COMBINE_OP, combineCpu as Kernel);
  add(COMBINE_BACKWARD_OP, combineBackwardCpu);
}

function useFused(ops: string[], be: Backend, dtypes: string[], impl: GroupedImpl | undefined): boolean {
  if (impl === 'composed') return false;
  ensureRegistered();
  return be.name === 'cpu' && dtypes.every((d) => d === 'f32' || d === 'f64') && ops.every((op) => hasKernel(op, be.name));
}

function run(op: string, inputs: Tensor[], attrs: unknown): Tensor[] {
  const be = inputs[0]!.backend;
  return runKernel(op, be, inputs, attrs).map((o) => new Tensor(be, o.storage, o.shape, o.dtype));
}

/** h = silu(g) · u (same shapes). */
export function swiglu(g: Tensor, u: Tensor, opts: { impl?: GroupedImpl } = {}): Tensor {
  if (g.shape.length !== u.shape.length || g.shape.some((d, i) => d !== u.shape[i]) || g.dtype !== u.dtype) {
    throw new Error(`swiglu: gate and up must have the same shape and dtype, got ${g.dtype} [${g.shape.join(', ')}] and ${u.dtype} [${u.shape.join(', ')}]`);
  }
  if (!useFused([SWIGLU_OP, SWIGLU_BACKWARD_OP], g.backend, [g.dtype], opts.impl)) return mul(silu(g), u);
  const h = run(SWIGLU_OP, [g, u], {})[0]!;
  return record(h, 'moeSwiGLU', [g, u], (dh) => {
    const [dg, du] = run(SWIGLU_BACKWARD_OP, [dh, g, u], {}) as [Tensor, Tensor];
    return [dg, du];
  });
}

/**
 * out [T, H] with out[rows[r]] += w[r] · y[r] for the N rows of y [N, H]; w [N] (same dtype as y),
 * rows an i32 tensor [N] of token indices in [0, T). Differentiable w.r.t. y and w.
 */
export function weightedScatterAdd(y: Tensor, w: Tensor, rows: Tensor, T: number, opts: { impl?: GroupedImpl } = {}): Tensor {
  if (y.ndim !== 2) throw new Error(`weightedScatterAdd: y must be [N, H], got [${y.shape.join(', ')}]`);
  const [N, H] = y.shape as [number, number];
  if (w.size !== N || rows.size !== N || rows.dtype !== 'i32' || w.dtype !== y.dtype) {
    throw new Error(`weightedScatterAdd: w (${w.dtype} [${w.shape.join(', ')}]) and rows (${rows.dtype} [${rows.shape.join(', ')}]) must have the N = ${N} rows of y (${y.dtype})`);
  }
  const w1 = reshape(w, [N]);
  const r1 = reshape(rows, [N]);
  if (!useFused([COMBINE_OP, COMBINE_BACKWARD_OP], y.backend, [y.dtype], opts.impl)) {
    return indexAdd(full([T, H], 0, { dtype: y.dtype, backend: y.backend }), 0, r1, mul(y, reshape(w1, [N, 1])));
  }
  const out = run(COMBINE_OP, [y, w1, r1], { T })[0]!;
  return record(out, 'moeWeightedScatterAdd', [y, w1], (g) => {
    const [dy, dw] = run(COMBINE_BACKWARD_OP, [g, y, w1, r1], {}) as [Tensor, Tensor];
    return [dy, dw];
  });
}
