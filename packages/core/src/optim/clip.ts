// Gradient clipping by global L2 norm.
import { noGrad } from '../autograd.js';
import { hasKernel } from '../backend.js';
import { exec1 } from '../ops/exec.js';
import { mul } from '../ops/elementwise.js';
import { sum } from '../ops/reduce.js';
import type { Parameter } from '../nn/module.js';

/** Scales all gradients so their global L2 norm is at most maxNorm; returns the norm before clipping. */
export async function clipGradNorm(params: Parameter[], maxNorm: number): Promise<number> {
  if (!(maxNorm > 0)) throw new RangeError(`clipGradNorm: maxNorm must be positive, got ${maxNorm}`);
  const withGrad = params.filter((p) => p.grad);
  let total = 0;
  for (const p of withGrad) {
    const g = p.grad!;
    const fusedSum = (g.dtype === 'f32' || g.dtype === 'f64') && hasKernel('sumSquares', g.backend.name);
    total += await noGrad(() => (fusedSum ? exec1('sumSquares', [g], {}) : sum(mul(g, g)))).item();
  }
  const norm = Math.sqrt(total);
  if (!Number.isFinite(norm)) throw new Error(`clipGradNorm: the gradient norm is ${norm} (a NaN or Inf gradient)`);
  if (norm > maxNorm) {
    const scale = maxNorm / (norm + 1e-6);
    noGrad(() => {
      for (const p of withGrad) p.grad = mul(p.grad!, scale);
    });
  }
  return norm;
}
