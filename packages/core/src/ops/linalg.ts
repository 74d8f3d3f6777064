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
  return record(out, 'matmul', [a, b], matmulBackward(a, b, transA, transB));
}

/** The backward of C = op(A) · op(B): [dA, dB] from C's gradient g. */
function matmulBackward(a: Tensor, b: Tensor, transA: boolean, transB: boolean) {
  return (g: Tensor): (Tensor | null)[] => {
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
  };
}

/** y = x Wᵀ (+ b), with W [out, in] as Hugging Face / PyTorch store it. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  const y = matmul(x, weight, { transB: true });
  return bias ? add(y, bias) : y;
}

/**
 * linear(x_i, W_i) for each weight of `weights`, x_i = `x` for all (Linears reading one input, e.g. MLA's
 * q_a and kv_a projections) or its own input each (independent Linears, e.g. MLA's q_b and kv_b): where
 * the backend has the 'linears' kernel, one job computes them all (on the CPU, one GEMM job instead of
 * one per weight). Each output's gradient node is matmul's, so the backward runs the same products; an
 * input's gradient sums its outputs' contributions as it would for the separate linears (bitwise for an
 * input read by these weights alone: two f32 terms add alike in either order).
 */
export function linears(x: Tensor | readonly Tensor[], weights: readonly Tensor[]): Tensor[] {
  const xs = Array.isArray(x) ? (x as readonly Tensor[]) : weights.map(() => x as Tensor);
  const be = xs[0]?.backend;
  const plain =
    be !== undefined &&
    weights.length > 1 &&
    xs.length === weights.length &&
    hasKernel('linears', be.name) &&
    weights.every((w, i) => {
      const xi = xs[i]!;
      return (
        xi.ndim >= 2 &&
        w.ndim === 2 &&
        w.dtype === xi.dtype &&
        w.shape[1] === xi.shape[xi.ndim - 1] &&
        w.backend === be &&
        xi.backend === be
      );
    });
  if (!plain) return weights.map((w, i) => linear(xs[i]!, w));
  requireFloat('linear', ...xs, ...weights);
  // each input's rows once (one gradient node for all its products)
  const rowsOf = new Map<Tensor, Tensor>();
  const rows = xs.map((xi) => {
    let r = rowsOf.get(xi);
    if (!r) rowsOf.set(xi, (r = xi.ndim === 2 ? xi : reshape(xi, [-1, xi.shape[xi.ndim - 1]!])));
    return r;
  });
  const ys = exec(
    'linears',
    weights.flatMap((w, i) => [rows[i]!, w]),
    {},
  );
  return ys.map((y, i) => {
    const [w, xi, r] = [weights[i]!, xs[i]!, rows[i]!];
    record(y, 'matmul', [r, w], matmulBackward(r, w, false, true));
    return xi.ndim === 2 ? y : reshape(y, [...xi.shape.slice(0, -1), w.shape[0]!]);
  });
}
