// Gradient clipping by global L2 norm. The norm and the clip factor stay on the gradients' backend
// (a GPU step reads nothing back to clip); clipGradNorm is the same with the norm read and checked.
import { noGrad, scaleGrad } from '../autograd.js';
import { hasKernel } from '../backend.js';
import { exec1 } from '../ops/exec.js';
import { concat, reshape } from '../ops/shape-ops.js';
import { cast, div, gt, sqrt, square, where } from '../ops/elementwise.js';
import { sum } from '../ops/reduce.js';
import type { Parameter } from '../nn/module.js';
import type { Tensor } from '../tensor.js';

/**
 * The global L2 norm of the gradients and the factor that clips it to at most maxNorm (maxNorm /
 * (norm + 1e-6) past it, else 1), both 0-d tensors on the gradients' backend, the gradients untouched:
 * hand the factor to AdamW.stepUpdate, which reads each gradient scaled by it. Null when no parameter
 * has a gradient. A NaN or Inf norm gives a non-finite factor: read the norm and stop.
 */
export function clipFactorOnDevice(params: Parameter[], maxNorm: number): { norm: Tensor; factor: Tensor } | null {
  if (!(maxNorm > 0)) throw new RangeError(`clipGradNorm: maxNorm must be positive, got ${maxNorm}`);
  const grads = params.flatMap((p) => (p.grad ? [p.grad] : []));
  if (grads.length === 0) return null;
  return noGrad(() => {
    const norm = sqrt(sum(squaredNorms(grads)));
    return { norm, factor: where(gt(norm, maxNorm), div(maxNorm, norm.add(1e-6)), 1) };
  });
}

/**
 * Each gradient's sum of squares, [count]: f64 where the backend has the fused kernels (the CPU: an f64
 * keeps every digit of an f32 gradient's norm; all f32 gradients as one job, sumSquaresMany) or all are
 * f64, else f32.
 */
function squaredNorms(grads: Tensor[]): Tensor {
  const backend = grads[0]!.backend.name;
  if (grads.every((g) => g.dtype === 'f32' && g.backend.name === backend) && hasKernel('sumSquaresMany', backend))
    return exec1('sumSquaresMany', grads, {});
  const fused = (g: Tensor) => (g.dtype === 'f32' || g.dtype === 'f64') && hasKernel('sumSquares', g.backend.name);
  const dtype = grads.every((g) => g.dtype === 'f64' || fused(g)) ? 'f64' : 'f32';
  const parts = grads.map((g) => {
    const s = fused(g) ? exec1('sumSquares', [g], {}) : sum(reshape(square(g), [-1]), 0, true);
    return cast(reshape(s, [1]), dtype);
  });
  return parts.length === 1 ? parts[0]! : concat(parts, 0);
}

/**
 * Scales all gradients so their global L2 norm is at most maxNorm, without leaving the device; returns
 * the norm before clipping as a scalar tensor (null when no parameter has a gradient). A NaN or Inf
 * norm leaves the gradients non-finite: read the norm (e.g. with the step's logged scalars) and stop.
 * (A step that ends in AdamW passes clipFactorOnDevice's factor to it instead: no pass over the gradients.)
 */
export function clipGradNormOnDevice(params: Parameter[], maxNorm: number): Tensor | null {
  const clip = clipFactorOnDevice(params, maxNorm);
  if (!clip) return null;
  noGrad(() => {
    // the factor in each gradient dtype once (scaleGrad would cast it per parameter)
    const inDType = new Map<string, Tensor>();
    for (const p of params) {
      if (!p.grad) continue;
      const d = p.grad.dtype;
      if (!inDType.has(d)) inDType.set(d, cast(clip.factor, d));
      scaleGrad(p.value, inDType.get(d)!);
    }
  });
  return clip.norm;
}

/** Scales all gradients so their global L2 norm is at most maxNorm; returns the norm before clipping. */
export async function clipGradNorm(params: Parameter[], maxNorm: number): Promise<number> {
  const t = clipGradNormOnDevice(params, maxNorm);
  const norm = t ? await t.item() : 0;
  if (!Number.isFinite(norm)) throw new Error(`clipGradNorm: the gradient norm is ${norm} (a NaN or Inf gradient)`);
  return norm;
}
