// The grouped GEMM's ops in core's kernel registry: names, attributes and the CPU kernels (for f32
// activations every segment's product runs in one job of core's GEMM (sgemmMany), each written straight
// into its rows of the output as core's 'matmul' kernel would compute it; other dtypes hand each
// segment to that kernel). The
// segment offsets are an i32 input tensor [E + 1] (on the CPU the kernel reads its own input; on
// WebGPU they stay on the device). The WebGPU kernels are in webgpu-grouped.ts; register.ts registers both.
import {
  allocStorageArray,
  CpuStorage,
  decodeBf16,
  decodeF16,
  type GemmArgs,
  getKernel,
  sgemmDeferred,
  sgemmMany,
  takeF32,
  weightProduct,
  type Backend,
  type Kernel,
  type KernelTensor,
} from '@dsv3/core';
import { newDeviceStackCache, type DeviceStackCache } from '@dsv3/fp8';

/** Registry name of the fused grouped product: inputs [x [N, K], offsets i32 [E + 1], w_0 .. w_{E-1}] → [y [N, O]]. */
export const GROUPED_MATMUL_OP = 'moe.groupedMatmul';
/** Registry name of the weight gradient: inputs [g [N, O], x [N, K], offsets i32 [E + 1]] → one [O, K] per listed expert. */
export const GROUPED_WEIGHT_GRAD_OP = 'moe.groupedWeightGrad';

/**
 * A device-side stack of the expert weights ([E, O, K]) kept by the caller between calls (WebGPU binds
 * one buffer, not E): rebuilt when the weights' storages change. Opaque to the caller.
 */
export type StackCache = DeviceStackCache;

export const newStackCache = newDeviceStackCache;

export interface GroupedMatmulAttrs {
  /** w_e is [O, K] (a Linear weight, y = x wᵀ) when true, [K, O] when false. */
  transB: boolean;
  /** Where a backend that stacks the weights keeps the stack (none: a stack per call). */
  cache?: StackCache | undefined;
}

export interface GroupedWeightGradAttrs {
  /** Experts to compute dW_e = g_segᵀ · x_seg ([O, K]) for, in output order. */
  experts: readonly number[];
  /**
   * The gradients are leaves' (only summed into .grad until the backward pass ends): the CPU may run
   * them in the background (core's sgemmDeferred).
   */
  deferrable?: boolean;
}

function cpuData(t: KernelTensor): ArrayLike<number> & { subarray(a: number, b: number): ArrayLike<number> } {
  return (t.storage as CpuStorage).data;
}

function view(t: KernelTensor, row0: number, rows: number, width: number): KernelTensor {
  const d = (t.storage as CpuStorage).data;
  return {
    storage: new CpuStorage(d.subarray(row0 * width, (row0 + rows) * width)),
    shape: [rows, width],
    dtype: t.dtype,
  };
}

/**
 * The expert weight's values as f32, widened as core's 'matmul' kernel widens a 16-bit weight before
 * its sgemm (exact: every bf16 / f16 value is an f32 value).
 */
function f32Weight(w: KernelTensor): Float32Array {
  const d = (w.storage as CpuStorage).data;
  if (w.dtype === 'bf16') return decodeBf16(d as Uint16Array);
  if (w.dtype === 'f16') return decodeF16(d as Uint16Array);
  return d as Float32Array;
}

/** CPU grouped product: each segment's rows of x times its expert's weight, into its rows of the output. */
export const cpuGroupedMatmul: Kernel<GroupedMatmulAttrs> = (be: Backend, inputs: KernelTensor[], { transB }) => {
  const [x, offsetsT, ...ws] = inputs;
  const offsets = cpuData(offsetsT!) as Int32Array;
  const N = x!.shape[0]!;
  const K = x!.shape[1]!;
  const O = transB ? ws[0]!.shape[0]! : ws[0]!.shape[1]!;
  // An f32 output may come from core's free list (stale values): the segments write their rows, and
  // rows outside them are zeroed here.
  const out = x!.dtype === 'f32' ? takeF32(N * O) : allocStorageArray(x!.dtype, N * O);
  out.fill(0, 0, offsets[0]! * O);
  out.fill(0, offsets[ws.length]! * O);
  const mm = getKernel<{ transA: boolean; transB: boolean }>('matmul', 'cpu');
  // The f32 products go to core's GEMM as one job over the experts (one staging pass, one hand-out to
  // the threads), each exactly the sgemm core's 'matmul' kernel would run, written where the
  // segment's rows are (a size that changes every step: no temporary to allocate and copy).
  const f32Products: GemmArgs[] = [];
  for (let e = 0; e < ws.length; e++) {
    const r0 = offsets[e]!;
    const c = offsets[e + 1]! - r0;
    if (c === 0) continue;
    const w = ws[e]!;
    if (transB && x!.dtype === 'f32' && w.dtype === 'bf16') {
      // x_seg · w_eᵀ against bf16 bits, decoded as the weight GEMM packs them.
      const xs = (x!.storage as CpuStorage).data as Float32Array;
      weightProduct({
        m: c,
        n: O,
        k: K,
        x: xs.subarray(r0 * K, (r0 + c) * K),
        w: (w.storage as CpuStorage).data as Uint16Array,
        y: (out as Float32Array).subarray(r0 * O, (r0 + c) * O),
      });
      continue;
    }
    if (x!.dtype === 'f32' && (w.dtype === 'f32' || w.dtype === 'bf16' || w.dtype === 'f16')) {
      // x_seg · op(w_e): for an f32 weight against its transpose this is weightProduct's own sgemm
      // (or, for a few rows, the GEMV it would take); the input gradient's dY_seg · w_e (and f16
      // weights, widened) is the sgemm core's matmul would run.
      f32Products.push({
        m: c,
        n: O,
        k: K,
        a: (x!.storage as CpuStorage).data as Float32Array,
        aOffset: r0 * K,
        b: f32Weight(w),
        transB,
        c: out as Float32Array,
        cOffset: r0 * O,
      });
      continue;
    }
    const [y] = mm(be, [view(x!, r0, c, K), w], { transA: false, transB });
    out.set(cpuData(y!) as never, r0 * O);
  }
  sgemmMany(f32Products);
  return [{ storage: new CpuStorage(out), shape: [N, O], dtype: x!.dtype }];
};

/** CPU weight gradient: dW_e = g_segᵀ x_seg for each listed expert. */
export const cpuGroupedWeightGrad: Kernel<GroupedWeightGradAttrs> = (
  be: Backend,
  [g, x, offsetsT]: KernelTensor[],
  { experts, deferrable },
) => {
  const offsets = cpuData(offsetsT!) as Int32Array;
  const O = g!.shape[1]!;
  const K = x!.shape[1]!;
  const mm = getKernel<{ transA: boolean; transB: boolean }>('matmul', 'cpu');
  // f32: every expert's g_segᵀ · x_seg as one job of core's GEMM (the sgemm core's 'matmul' kernel
  // runs for each, with the segments read at their offsets instead of through views).
  const f32 = g!.dtype === 'f32' && x!.dtype === 'f32';
  const f32Products: GemmArgs[] = [];
  const grads = experts.map((e): KernelTensor => {
    const r0 = offsets[e]!;
    const c = offsets[e + 1]! - r0;
    if (c === 0) return { storage: new CpuStorage(allocStorageArray(g!.dtype, O * K)), shape: [O, K], dtype: g!.dtype };
    if (!f32) return mm(be, [view(g!, r0, c, O), view(x!, r0, c, K)], { transA: true, transB: false })[0]!;
    const dW = takeF32(O * K);
    f32Products.push({
      m: O,
      n: K,
      k: c,
      a: cpuData(g!) as Float32Array,
      aOffset: r0 * O,
      transA: true,
      b: cpuData(x!) as Float32Array,
      bOffset: r0 * K,
      c: dW,
    });
    return { storage: new CpuStorage(dW), shape: [O, K], dtype: 'f32' };
  });
  // Weight gradients, read once the backward ends: on the GEMM's workers in the background where they
  // can take them (sgemmDeferred), the rest as one job now.
  sgemmMany(f32Products.filter((p) => !deferrable || !sgemmDeferred(p)));
  return grads;
};
