// Grouped GEMM over variable-size expert segments: rows [offsets[e], offsets[e+1]) of x go through
// expert e's weight. One fused kernel per backend in core's registry ('cpu' here: each segment is a
// zero-copy view handed to core's f32 WASM-SIMD GEMM through its 'matmul' kernel), its backward
// attached with record() (both gradients are grouped GEMMs again); backends without the kernel get the
// same product composed from core ops (narrow, matmul, concat) and core's autograd. WebGPU: WGSL
// kernels in webgpu-grouped.ts (f32).
import { concat, exec, full, hasKernel, matmul, narrow, record, type Backend, type Tensor } from '@dsv3/core';
import './register';
import {
  GROUPED_MATMUL_OP,
  GROUPED_WEIGHT_GRAD_OP,
  type GroupedMatmulAttrs,
  type GroupedWeightGradAttrs,
} from './grouped-kernels';

/** dtypes the fused kernels of a backend handle (the CPU: all floats; WebGPU: f32). */
const FUSED_DTYPES: Record<string, readonly string[]> = { webgpu: ['f32'] };

/** Whether the fused kernels of `backend` handle `dtype`. */
export function fusedGroupedSupports(backend: Backend, dtype: string): boolean {
  if (!hasGroupedKernel(backend)) return false;
  const only = FUSED_DTYPES[backend.name];
  return only === undefined || only.includes(dtype);
}

export type GroupedImpl = 'auto' | 'fused' | 'composed';

export interface GroupedLinearOptions {
  /**
   * 'fused' needs the registered kernel of the backend, 'composed' builds the product from core ops,
   * 'auto' (default) takes the kernel where the backend has one.
   */
  impl?: GroupedImpl;
}

function checkOffsets(offsets: ArrayLike<number>, E: number, N: number): void {
  if (offsets.length !== E + 1)
    throw new Error(`groupedLinear: offsets must have ${E + 1} entries (experts + 1), got ${offsets.length}`);
  if (offsets[0] !== 0 || offsets[E] !== N)
    throw new Error(`groupedLinear: offsets must run from 0 to the ${N} rows of x, got ${offsets[0]}..${offsets[E]}`);
  for (let e = 0; e < E; e++) {
    const a = offsets[e]!;
    const b = offsets[e + 1]!;
    if (!Number.isInteger(b) || b < a)
      throw new Error(`groupedLinear: offsets must be non-decreasing integers (expert ${e}: ${a}..${b})`);
  }
}

/** Whether `backend` has the fused grouped kernels. */
export function hasGroupedKernel(backend: Backend): boolean {
  return hasKernel(GROUPED_MATMUL_OP, backend.name) && hasKernel(GROUPED_WEIGHT_GRAD_OP, backend.name);
}

/**
 * Grouped Linear: y[r] = x[r] · W_eᵀ for the rows r of segment e = [offsets[e], offsets[e+1]), with
 * x [N, K] (rows sorted by expert) and W_e [O, K]. Differentiable w.r.t. x and every W_e; an expert
 * whose segment is empty gets no gradient (null, as an unused PyTorch parameter).
 */
export function groupedLinear(
  x: Tensor,
  weights: readonly Tensor[],
  offsets: ArrayLike<number>,
  opts: GroupedLinearOptions = {},
): Tensor {
  const E = weights.length;
  if (E === 0) throw new Error('groupedLinear: no expert weights');
  if (x.ndim !== 2) throw new Error(`groupedLinear: x must be [N, K], got [${x.shape.join(', ')}]`);
  const [N, K] = x.shape as [number, number];
  const w0 = weights[0]!;
  if (w0.ndim !== 2) throw new Error(`groupedLinear: expert weights must be [O, K], got [${w0.shape.join(', ')}]`);
  const O = w0.shape[0]!;
  for (let e = 0; e < E; e++) {
    const w = weights[e]!;
    if (w.ndim !== 2 || w.shape[0] !== O || w.shape[1] !== K) {
      throw new Error(
        `groupedLinear: weight of expert ${e} is [${w.shape.join(', ')}], expected [${O}, ${K}] (x is [${N}, ${K}])`,
      );
    }
    // Weight-only bf16 on the CPU: f32 x against bf16 expert weights (decoded in the GEMV/GEMM kernels).
    const weightOnly = x.dtype === 'f32' && w.dtype === 'bf16' && !w.requiresGrad && x.backend.name === 'cpu';
    if (w.dtype !== x.dtype && !weightOnly)
      throw new TypeError(`groupedLinear: x is ${x.dtype} but the weight of expert ${e} is ${w.dtype}; cast one first`);
  }
  checkOffsets(offsets, E, N);
  const offs = Array.from(offsets);
  const impl = opts.impl ?? 'auto';
  const fused = impl === 'fused' || (impl === 'auto' && fusedGroupedSupports(x.backend, x.dtype));
  if (!fused) return composedGroupedLinear(x, weights, offs, O);
  if (!fusedGroupedSupports(x.backend, x.dtype)) {
    throw new Error(
      `groupedLinear: no fused grouped-GEMM kernel for ${x.dtype} on the ${x.backend.name} backend; use impl 'composed' or 'auto'`,
    );
  }
  const y = exec(GROUPED_MATMUL_OP, [x, ...weights], { offsets: offs, transB: true } satisfies GroupedMatmulAttrs)[0]!;
  return record(y, 'groupedLinear', [x, ...weights], (g) => {
    const gx = x.requiresGrad
      ? exec(GROUPED_MATMUL_OP, [g, ...weights], { offsets: offs, transB: false } satisfies GroupedMatmulAttrs)[0]!
      : null;
    const want: number[] = [];
    for (let e = 0; e < E; e++) if (weights[e]!.requiresGrad && offs[e + 1]! > offs[e]!) want.push(e);
    const gws: (Tensor | null)[] = new Array<Tensor | null>(E).fill(null);
    if (want.length) {
      const outs = exec(GROUPED_WEIGHT_GRAD_OP, [g, x], {
        offsets: offs,
        experts: want,
      } satisfies GroupedWeightGradAttrs);
      want.forEach((e, i) => (gws[e] = outs[i]!));
    }
    return [gx, ...gws];
  });
}

/** The same product from core ops: a slice, a matmul per non-empty segment, one concat. */
function composedGroupedLinear(x: Tensor, weights: readonly Tensor[], offs: number[], O: number): Tensor {
  const parts: Tensor[] = [];
  for (let e = 0; e < weights.length; e++) {
    const c = offs[e + 1]! - offs[e]!;
    if (c === 0) continue;
    parts.push(matmul(narrow(x, 0, offs[e]!, c), weights[e]!, { transB: true }));
  }
  if (parts.length === 0) return full([0, O], 0, { dtype: x.dtype, backend: x.backend });
  return concat(parts, 0);
}
