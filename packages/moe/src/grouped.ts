// Grouped GEMM over variable-size expert segments: rows [offsets[e], offsets[e+1]) of x go through
// expert e's weight. One fused kernel per backend in core's registry ('cpu' here: each segment is a
// zero-copy view handed to core's f32 WASM-SIMD GEMM through its 'matmul' kernel), its backward
// attached with record() (both gradients are grouped GEMMs again); backends without the kernel get the
// same product composed from core ops (narrow, matmul, concat) and core's autograd. WebGPU: WGSL
// kernels in webgpu-grouped.ts (f32).
import {
  allocStorageArray,
  concat,
  CpuStorage,
  full,
  getKernel,
  hasKernel,
  matmul,
  narrow,
  record,
  registerKernel,
  runKernel,
  Tensor,
  type Backend,
  type Kernel,
  type KernelTensor,
} from '@dsv3/core';
import { webgpuGroupedMatmul, webgpuGroupedWeightGrad } from './webgpu-grouped';

/** Registry name of the fused grouped product: inputs [x [N, K], w_0 .. w_{E-1}] → [y [N, O]]. */
export const GROUPED_MATMUL_OP = 'moe.groupedMatmul';
/** Registry name of the weight gradient: inputs [g [N, O], x [N, K]] → one [O, K] per listed expert. */
export const GROUPED_WEIGHT_GRAD_OP = 'moe.groupedWeightGrad';

export interface GroupedMatmulAttrs {
  /** [E + 1] segment bounds (rows of x), offsets[0] = 0, offsets[E] = N. */
  offsets: readonly number[] | Int32Array;
  /** w_e is [O, K] (a Linear weight, y = x wᵀ) when true, [K, O] when false. */
  transB: boolean;
}

export interface GroupedWeightGradAttrs {
  offsets: readonly number[] | Int32Array;
  /** Experts to compute dW_e = g_segᵀ · x_seg ([O, K]) for, in output order. */
  experts: readonly number[];
}

function cpuData(t: KernelTensor): ArrayLike<number> & { subarray(a: number, b: number): ArrayLike<number> } {
  return (t.storage as CpuStorage).data;
}

function view(t: KernelTensor, row0: number, rows: number, width: number): KernelTensor {
  const d = (t.storage as CpuStorage).data;
  return { storage: new CpuStorage(d.subarray(row0 * width, (row0 + rows) * width)), shape: [rows, width], dtype: t.dtype };
}

/** CPU grouped product: each segment is a view of x multiplied by core's matmul kernel (sgemm for f32). */
export const cpuGroupedMatmul: Kernel<GroupedMatmulAttrs> = (be: Backend, inputs: KernelTensor[], { offsets, transB }) => {
  const [x, ...ws] = inputs;
  const N = x!.shape[0]!;
  const K = x!.shape[1]!;
  const O = transB ? ws[0]!.shape[0]! : ws[0]!.shape[1]!;
  const out = allocStorageArray(x!.dtype, N * O);
  const mm = getKernel<{ transA: boolean; transB: boolean }>('matmul', 'cpu');
  for (let e = 0; e < ws.length; e++) {
    const r0 = offsets[e]!;
    const c = offsets[e + 1]! - r0;
    if (c === 0) continue;
    const [y] = mm(be, [view(x!, r0, c, K), ws[e]!], { transA: false, transB });
    out.set(cpuData(y!) as never, r0 * O);
  }
  return [{ storage: new CpuStorage(out), shape: [N, O], dtype: x!.dtype }];
};

/** CPU weight gradient: dW_e = g_segᵀ x_seg for each listed expert. */
export const cpuGroupedWeightGrad: Kernel<GroupedWeightGradAttrs> = (be: Backend, [g, x]: KernelTensor[], { offsets, experts }) => {
  const O = g!.shape[1]!;
  const K = x!.shape[1]!;
  const mm = getKernel<{ transA: boolean; transB: boolean }>('matmul', 'cpu');
  return experts.map((e) => {
    const r0 = offsets[e]!;
    const c = offsets[e + 1]! - r0;
    if (c === 0) return { storage: new CpuStorage(allocStorageArray(g!.dtype, O * K)), shape: [O, K], dtype: g!.dtype };
    return mm(be, [view(g!, r0, c, O), view(x!, r0, c, K)], { transA: true, transB: false })[0]!;
  });
};

let registered = false;
/**
 * Registers the CPU kernels (idempotent; done lazily on first use so the package stays free of import
 * side effects). Other backends register theirs under the same op names.
 */
export function registerGroupedKernels(): void {
  if (registered) return;
  registered = true;
  if (!hasKernel(GROUPED_MATMUL_OP, 'cpu')) registerKernel(GROUPED_MATMUL_OP, 'cpu', cpuGroupedMatmul);
  if (!hasKernel(GROUPED_WEIGHT_GRAD_OP, 'cpu')) registerKernel(GROUPED_WEIGHT_GRAD_OP, 'cpu', cpuGroupedWeightGrad);
  if (!hasKernel(GROUPED_MATMUL_OP, 'webgpu')) registerKernel(GROUPED_MATMUL_OP, 'webgpu', webgpuGroupedMatmul);
  if (!hasKernel(GROUPED_WEIGHT_GRAD_OP, 'webgpu')) registerKernel(GROUPED_WEIGHT_GRAD_OP, 'webgpu', webgpuGroupedWeightGrad);
}

/** dtypes the fused kernels of a backend handle (the CPU: all floats; WebGPU: f32). */
const FUSED_DTYPES: Record<string, readonly string[]> = { webgpu: ['f32'] };

/** Whether the fused kernels of `backend` handle `dtype`. */
export function fusedGroupedSupports(backend: Backend, dtype: string): boolean {
  if (!hasGroupedKernel(backend)) return false;
  const only = FUSED_DTYPES[backend.name];
  return only === undefined || only.includes(dtype);
}

/** Runs a registered kernel on tensors and wraps its outputs. */
function exec(op: string, inputs: readonly Tensor[], attrs: unknown): Tensor[] {
  const be = inputs[0]!.backend;
  for (const t of inputs) {
    if (t.backend !== be) throw new Error(`${op}: tensors live on different backends (${be.name} and ${t.backend.name})`);
  }
  return runKernel(op, be, inputs as Tensor[], attrs).map((o) => new Tensor(be, o.storage, o.shape, o.dtype));
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
  if (offsets.length !== E + 1) throw new Error(`groupedLinear: offsets must have ${E + 1} entries (experts + 1), got ${offsets.length}`);
  if (offsets[0] !== 0 || offsets[E] !== N) throw new Error(`groupedLinear: offsets must run from 0 to the ${N} rows of x, got ${offsets[0]}..${offsets[E]}`);
  for (let e = 0; e < E; e++) {
    const a = offsets[e]!;
    const b = offsets[e + 1]!;
    if (!Number.isInteger(b) || b < a) throw new Error(`groupedLinear: offsets must be non-decreasing integers (expert ${e}: ${a}..${b})`);
  }
}

/** Whether `backend` has the fused grouped kernels. */
export function hasGroupedKernel(backend: Backend): boolean {
  registerGroupedKernels();
  return hasKernel(GROUPED_MATMUL_OP, backend.name) && hasKernel(GROUPED_WEIGHT_GRAD_OP, backend.name);
}

/**
 * Grouped Linear: y[r] = x[r] · W_eᵀ for the rows r of segment e = [offsets[e], offsets[e+1]), with
 * x [N, K] (rows sorted by expert) and W_e [O, K]. Differentiable w.r.t. x and every W_e; an expert
 * whose segment is empty gets no gradient (null, as an unused PyTorch parameter).
 */
export function groupedLinear(x: Tensor, weights: readonly Tensor[], offsets: ArrayLike<number>, opts: GroupedLinearOptions = {}): Tensor {
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
      throw new Error(`groupedLinear: weight of expert ${e} is [${w.shape.join(', ')}], expected [${O}, ${K}] (x is [${N}, ${K}])`);
    }
    // Weight-only bf16 on the CPU: f32 x against bf16 expert weights (decoded in the GEMV/GEMM kernels).
    const weightOnly = x.dtype === 'f32' && w.dtype === 'bf16' && !w.requiresGrad && x.backend.name === 'cpu';
    if (w.dtype !== x.dtype && !weightOnly) throw new TypeError(`groupedLinear: x is ${x.dtype} but the weight of expert ${e} is ${w.dtype}; cast one first`);
  }
  checkOffsets(offsets, E, N);
  const offs = Array.from(offsets);
  const impl = opts.impl ?? 'auto';
  const fused = impl === 'fused' || (impl === 'auto' && fusedGroupedSupports(x.backend, x.dtype));
  if (!fused) return composedGroupedLinear(x, weights, offs, O);
  if (!fusedGroupedSupports(x.backend, x.dtype)) {
    throw new Error(`groupedLinear: no fused grouped-GEMM kernel for ${x.dtype} on the ${x.backend.name} backend; use impl 'composed' or 'auto'`);
  }
  const y = exec(GROUPED_MATMUL_OP, [x, ...weights], { offsets: offs, transB: true } satisfies GroupedMatmulAttrs)[0]!;
  return record(y, 'groupedLinear', [x, ...weights], (g) => {
    const gx = x.requiresGrad ? exec(GROUPED_MATMUL_OP, [g, ...weights], { offsets: offs, transB: false } satisfies GroupedMatmulAttrs)[0]! : null;
    const want: number[] = [];
    for (let e = 0; e < E; e++) if (weights[e]!.requiresGrad && offs[e + 1]! > offs[e]!) want.push(e);
    const gws: (Tensor | null)[] = new Array<Tensor | null>(E).fill(null);
    if (want.length) {
      const outs = exec(GROUPED_WEIGHT_GRAD_OP, [g, x], { offsets: offs, experts: want } satisfies GroupedWeightGradAttrs);
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
