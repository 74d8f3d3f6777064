// Grouped GEMM over variable-size expert segments: rows [offsets[e], offsets[e+1]) of x go through
// expert e's weight. The offsets are a host array or an i32 tensor [E + 1] on x's backend (the MoE
// layer's, computed on the device by its dispatch: nothing is read back). One fused kernel per backend
// in core's registry ('cpu': each segment is a zero-copy view handed to core's f32 WASM-SIMD GEMM;
// WebGPU: WGSL kernels in webgpu-grouped.ts, f32 or weight-only bf16 / f16), its backward attached with record() (both gradients
// are grouped GEMMs again). Backends without the kernel get the same product composed from core ops:
// narrow / matmul / concat when the offsets are known on the host, else every expert over all rows,
// masked to its segment (E times the work: a reference, not a fast path).
import {
  add,
  arange,
  cast,
  concat,
  exec,
  full,
  ge,
  hasKernel,
  lt,
  matmul,
  mul,
  narrow,
  onlyAccumulatesGrad,
  record,
  reshape,
  tensor,
  type Backend,
  type Tensor,
} from '@dsv3/core';
import './register';
import {
  GROUPED_MATMUL_OP,
  GROUPED_WEIGHT_GRAD_OP,
  type GroupedMatmulAttrs,
  type GroupedWeightGradAttrs,
  type StackCache,
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
  /** Where the WebGPU kernel keeps its stack of the expert weights between calls (see StackCache). */
  cache?: StackCache | undefined;
}

export function checkOffsets(offsets: ArrayLike<number>, E: number, N: number): void {
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
 * x [N, K] (rows sorted by expert) and W_e [O, K]. Differentiable w.r.t. x and every W_e. An expert
 * whose segment is known (on the host) to be empty gets no gradient (null, as an unused PyTorch
 * parameter); with device offsets on a backend that cannot read them synchronously every expert gets
 * one (zeros for an empty segment), since finding out would be a read-back.
 */
export function groupedLinear(
  x: Tensor,
  weights: readonly Tensor[],
  offsets: Tensor | ArrayLike<number>,
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
    // Weight-only bf16 / f16 (inference): f32 x against 16-bit expert weights, read as f32 in the kernels' loads.
    const weightOnly = x.dtype === 'f32' && (w.dtype === 'bf16' || w.dtype === 'f16') && !w.requiresGrad;
    if (w.dtype !== x.dtype && !weightOnly)
      throw new TypeError(`groupedLinear: x is ${x.dtype} but the weight of expert ${e} is ${w.dtype}; cast one first`);
  }
  let offs: Tensor;
  if (isTensor(offsets)) {
    if (offsets.dtype !== 'i32' || offsets.ndim !== 1 || offsets.shape[0] !== E + 1 || offsets.backend !== x.backend)
      throw new Error(
        `groupedLinear: offsets must be an i32 [${E + 1}] tensor on x's ${x.backend.name} backend, got ${offsets.dtype} [${offsets.shape.join(', ')}] on ${offsets.backend.name}`,
      );
    offs = offsets;
  } else {
    checkOffsets(offsets, E, N);
    offs = tensor(Int32Array.from(offsets), { dtype: 'i32', backend: x.backend });
  }
  // the segment bounds where they are on the host already (a host array, or a CPU tensor's own memory)
  const host: ArrayLike<number> | null = isTensor(offsets)
    ? offsets.backend.readSync
      ? offsets.dataSync()
      : null
    : offsets;
  const impl = opts.impl ?? 'auto';
  const fused = impl === 'fused' || (impl === 'auto' && fusedGroupedSupports(x.backend, x.dtype));
  if (!fused) return composedGroupedLinear(x, weights, host ?? offs, O);
  if (!fusedGroupedSupports(x.backend, x.dtype)) {
    throw new Error(
      `groupedLinear: no fused grouped-GEMM kernel for ${x.dtype} on the ${x.backend.name} backend; use impl 'composed' or 'auto'`,
    );
  }
  const attrs = (transB: boolean): GroupedMatmulAttrs => ({ transB, cache: opts.cache });
  const y = exec(GROUPED_MATMUL_OP, [x, offs, ...weights], attrs(true))[0]!;
  return record(y, 'groupedLinear', [x, ...weights], (g) => {
    const gx = x.requiresGrad ? exec(GROUPED_MATMUL_OP, [g, offs, ...weights], attrs(false))[0]! : null;
    const want: number[] = [];
    for (let e = 0; e < E; e++)
      if (weights[e]!.requiresGrad && (host === null || host[e + 1]! > host[e]!)) want.push(e);
    const gws: (Tensor | null)[] = new Array<Tensor | null>(E).fill(null);
    if (want.length) {
      // Leaves' gradients are only summed into .grad until the pass ends: the backend may defer them.
      const leaves = want.every((e) => onlyAccumulatesGrad(weights[e]!));
      const outs = exec(GROUPED_WEIGHT_GRAD_OP, [g, x, offs], {
        experts: want,
        deferrable: leaves,
      } satisfies GroupedWeightGradAttrs);
      want.forEach((e, i) => (gws[e] = outs[i]!));
    }
    return [gx, ...gws];
  });
}

function isTensor(t: unknown): t is Tensor {
  return typeof t === 'object' && t !== null && 'shape' in t && 'dtype' in t && 'backend' in t;
}

/** The same product from core ops (see the module comment). */
function composedGroupedLinear(
  x: Tensor,
  weights: readonly Tensor[],
  offs: ArrayLike<number> | Tensor,
  O: number,
): Tensor {
  const N = x.shape[0]!;
  if (isTensor(offs)) {
    const rows = reshape(arange(N, { dtype: 'i32', backend: x.backend }), [N, 1]);
    let y = full([N, O], 0, { dtype: x.dtype, backend: x.backend });
    for (let e = 0; e < weights.length; e++) {
      const inSeg = mul(
        cast(ge(rows, narrow(offs, 0, e, 1)), x.dtype),
        cast(lt(rows, narrow(offs, 0, e + 1, 1)), x.dtype),
      );
      y = add(y, mul(matmul(x, weights[e]!, { transB: true }), inSeg));
    }
    return y;
  }
  const parts: Tensor[] = [];
  for (let e = 0; e < weights.length; e++) {
    const c = offs[e + 1]! - offs[e]!;
    if (c === 0) continue;
    parts.push(matmul(narrow(x, 0, offs[e]!, c), weights[e]!, { transB: true }));
  }
  if (parts.length === 0) return full([0, O], 0, { dtype: x.dtype, backend: x.backend });
  return concat(parts, 0);
}
