// Matrix products (batched, broadcast over leading axes, with transposed operands) and Linear.
import { isGradEnabled, onlyAccumulatesGrad, record } from '../autograd.js';
import { hasKernel } from '../backend.js';
import type { Tensor } from '../tensor.js';
import { add } from './elementwise.js';
import { exec, exec1, requireFloat } from './exec.js';
import { sumToShape } from './reduce.js';
import { reshape } from './shape-ops.js';

export interface MatmulOptions {
  /** Use a's last two axes transposed (a stored [.., K, M]). */
  transA?: boolean;
  /** Use b's last two axes transposed (b stored [.., N, K], like a Linear weight). */
  transB?: boolean;
}

export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  requireFloat('matmul', a, b);
  // Weight-only bf16 / f16: f32 activations against a 16-bit weight (decoded in the kernel), result f32.
  const weightOnly = a.dtype === 'f32' && (b.dtype === 'bf16' || b.dtype === 'f16') && !b.requiresGrad;
  if (a.dtype !== b.dtype && !weightOnly)
    throw new TypeError(`matmul: dtypes differ (${a.dtype} and ${b.dtype}); cast one first`);
  // x [..., m, k] against a matrix: one product over all rows (the weight gradient then comes out of
  // one GEMM over every row, not a GEMM per batch item and a sum).
  if (b.ndim === 2 && a.ndim > 2 && !transA) {
    const rows = reshape(a, [-1, a.shape[a.ndim - 1]!]);
    const y = matmul(rows, b, opts);
    return reshape(y, [...a.shape.slice(0, -1), y.shape[1]!]);
  }
  const out = exec1('matmul', [a, b], { transA, transB });
  return record(out, 'matmul', [a, b], (g) => {
    // Both gradients of a plain product in one kernel call where the backend has one (the CPU runs
    // them as one GEMM job, each on its own thread): the same two products, bitwise. Not while
    // recording (a gradient of the gradient needs the composed form).
    if (a.requiresGrad && b.requiresGrad && a.ndim === 2 && b.ndim === 2 && !isGradEnabled()) {
      if (hasKernel('matmulGrads', g.backend.name)) {
        // b a leaf (a Linear's weight): the backend may compute its gradient in the background.
        const [ga, gb] = exec('matmulGrads', [g, a, b], { transA, transB, deferB: onlyAccumulatesGrad(b) });
        return [ga!, gb!];
      }
    }
    const mm = (x: Tensor, y: Tensor, tA: boolean, tB: boolean): Tensor => matmul(x, y, { transA: tA, transB: tB });
    // d op(A) = G op(B)ᵀ and d op(B) = op(A)ᵀ G, written without materialising any transpose.
    const ga = !a.requiresGrad ? null : !transA ? mm(g, b, false, !transB) : mm(b, g, transB, true);
    const gb = !b.requiresGrad ? null : !transB ? mm(a, g, !transA, false) : mm(g, a, true, transA);
    return [ga && sumToShape(ga, a.shape), gb && sumToShape(gb, b.shape)];
  });
}

/** y = x Wᵀ (+ b), with W [out, in] as Hugging Face / PyTorch store it. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  const y = matmul(x, weight, { transB: true });
  return bias ? add(y, bias) : y;
}
