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
 * Scales all gradients so their global L2 norm is at most maxNorm, without leaving the device; returns
 * the norm before clipping as a scalar tensor (null when no parameter has a gradient). A NaN or Inf
 * norm leaves the gradients non-finite: read the norm (e.g. with the step's logged scalars) and stop.
 */
export function clipGradNormOnDevice(params: Parameter[], maxNorm: number): Tensor | null {
  if (!(maxNorm > 0)) throw new RangeError(`clipGradNorm: maxNorm must be positive, got ${maxNorm}`);
  const withGrad = params.filter((p) => p.grad);
  if (withGrad.length === 0) return null;
  return noGrad(() => {
    // Per-parameter sums of squares, then one sum over them: f64 where the backend has the fused
    // sumSquares kernel (the CPU: a 0-d f64 keeps every digit of an f32 gradient's norm) or all grads
    // are f64, else f32.
    const fused = (g: Tensor) => (g.dtype === 'f32' || g.dtype === 'f64') && hasKernel('sumSquares', g.backend.name);
    const dtype = withGrad.every((p) => p.grad!.dtype === 'f64' || fused(p.grad!)) ? 'f64' : 'f32';
    const parts = withGrad.map((p) => {
      const g = p.grad!;
      const s = fused(g) ? exec1('sumSquares', [g], {}) : sum(reshape(square(g), [-1]), 0, true);
      return cast(reshape(s, [1]), dtype);
    });
    const norm = sqrt(sum(parts.length === 1 ? parts[0]! : concat(parts, 0)));
    const factor = where(gt(norm, maxNorm), div(maxNorm, norm.add(1e-6)), 1);
    // the factor in each gradient dtype once (scaleGrad would cast it per parameter)
    const inDType = new Map<string, Tensor>();
    for (const p of withGrad) {
      const d = p.grad!.dtype;
      if (!inDType.has(d)) inDType.set(d, cast(factor, d));
      scaleGrad(p.value, inDType.get(d)!);
    }
    return norm;
  });
}

/** Scales all gradients so their global L2 norm is at most maxNorm; returns the norm before clipping. */
export async function clipGradNorm(params: Parameter[], maxNorm: number): Promise<number> {
  const t = clipGradNormOnDevice(params, maxNorm);
  const norm = t ? await t.item() : 0;
  if (!Number.isFinite(norm)) throw new Error(`clipGradNorm: the gradient norm is ${norm} (a NaN or Inf gradient)`);
  return norm;
}
