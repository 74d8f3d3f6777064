// One task of a row-kernel job (WasmGemm.runRowKernels): a call of one export of the attention rows
// module (attention-rows-simd.ts, which every engine thread instantiates over the engine's memory) on
// i32 arguments — row ranges of an elementwise or per-row pass, split so the GEMM workers share it. It
// runs on the calling thread and on the workers, whose source embeds it with toString(): self-contained,
// no imports, no module-level constants, no nested functions.
//
// Task fields (Int32 words): 1 the kernel (an index into ROW_KERNELS)  2 the argument count (at most 16)
// 3.. the arguments.

/** The kernels a row-kernel task can call, by index; each thread binds them in this order. */
export const ROW_KERNELS = [
  'combineRows',
  'swiglu',
  'swigluBackward',
  'siluBackward',
  'silu',
  'adamwRows',
  'sumSquaresRow',
  'gatherRows',
  'arithRows',
  'fillRows',
  'rmsnormRows',
  'rmsnormBackwardRows',
  'scatterAddRows',
  'combineBackwardRows',
] as const;
export type RowKernel = (typeof ROW_KERNELS)[number];

/** Runs task `f` with `kernels`, the module's exports named by ROW_KERNELS, in its order. */
export function rowKernelTask(kernels: readonly ((...args: number[]) => void)[], f: Int32Array): void {
  const args: number[] = [];
  for (let i = 0; i < (f[2] as number); i++) args.push(f[3 + i] as number);
  (kernels[f[1] as number] as (...a: number[]) => void)(...args);
}
