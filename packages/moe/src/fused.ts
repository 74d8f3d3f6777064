// Two small fused CPU kernels around the grouped GEMMs, each with its backward attached by record():
//   swiglu(g, u)                       h = silu(g) · u                       (one pass instead of three)
//   weightedScatterAdd(y, w, rows, T)  out[rows[r]] += w[r] · y[r], out [T, H] (scale + scatter-add in one)
// Both fall back to the same math from core ops (and core's autograd) on other backends and dtypes,
// or when forced with impl 'composed'.
import { exec, full, hasKernel, indexAdd, mul, record, reshape, silu, type Backend, type Tensor } from '@dsv3/core';
import './register';
import { COMBINE_BACKWARD_OP, COMBINE_OP, SWIGLU_BACKWARD_OP, SWIGLU_OP } from './fused-kernels';
import type { GroupedImpl } from './grouped';

function useFused(ops: string[], be: Backend, dtypes: string[], impl: GroupedImpl | undefined): boolean {
  if (impl === 'composed') return false;
  return (
    be.name === 'cpu' && dtypes.every((d) => d === 'f32' || d === 'f64') && ops.every((op) => hasKernel(op, be.name))
  );
}

/** h = silu(g) · u (same shapes). */
export function swiglu(g: Tensor, u: Tensor, opts: { impl?: GroupedImpl } = {}): Tensor {
  if (g.shape.length !== u.shape.length || g.shape.some((d, i) => d !== u.shape[i]) || g.dtype !== u.dtype) {
    throw new Error(
      `swiglu: gate and up must have the same shape and dtype, got ${g.dtype} [${g.shape.join(', ')}] and ${u.dtype} [${u.shape.join(', ')}]`,
    );
  }
  if (!useFused([SWIGLU_OP, SWIGLU_BACKWARD_OP], g.backend, [g.dtype], opts.impl)) return mul(silu(g), u);
  const h = exec(SWIGLU_OP, [g, u], {})[0]!;
  return record(h, 'moeSwiGLU', [g, u], (dh) => {
    const [dg, du] = exec(SWIGLU_BACKWARD_OP, [dh, g, u], {}) as [Tensor, Tensor];
    return [dg, du];
  });
}

/**
 * out [T, H] with out[rows[r]] += w[r] · y[r] for the N rows of y [N, H]; w [N] (same dtype as y),
 * rows an i32 tensor [N] of token indices in [0, T). Differentiable w.r.t. y and w.
 */
export function weightedScatterAdd(
  y: Tensor,
  w: Tensor,
  rows: Tensor,
  T: number,
  opts: { impl?: GroupedImpl } = {},
): Tensor {
  if (y.ndim !== 2) throw new Error(`weightedScatterAdd: y must be [N, H], got [${y.shape.join(', ')}]`);
  const [N, H] = y.shape as [number, number];
  if (w.size !== N || rows.size !== N || rows.dtype !== 'i32' || w.dtype !== y.dtype) {
    throw new Error(
      `weightedScatterAdd: w (${w.dtype} [${w.shape.join(', ')}]) and rows (${rows.dtype} [${rows.shape.join(', ')}]) must have the N = ${N} rows of y (${y.dtype})`,
    );
  }
  const w1 = reshape(w, [N]);
  const r1 = reshape(rows, [N]);
  if (!useFused([COMBINE_OP, COMBINE_BACKWARD_OP], y.backend, [y.dtype], opts.impl)) {
    return indexAdd(full([T, H], 0, { dtype: y.dtype, backend: y.backend }), 0, r1, mul(y, reshape(w1, [N, 1])));
  }
  const out = exec(COMBINE_OP, [y, w1, r1], { T })[0]!;
  return record(out, 'moeWeightedScatterAdd', [y, w1], (g) => {
    const [dy, dw] = exec(COMBINE_BACKWARD_OP, [g, y, w1, r1], {}) as [Tensor, Tensor];
    return [dy, dw];
  });
}
