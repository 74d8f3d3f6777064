// How each dtype lives in a GPU buffer. Every buffer is bound as array<u32>: 32-bit dtypes take one
// word per element, f16/bf16 pack two elements per word (low half first) and the byte dtypes four.
// Kernels compute in the dtype's "compute type": f32 for the floats, i32, or u32 (u8 and bool too).
import type { DType } from '../dtype.js';

export type ComputeType = 'f32' | 'i32' | 'u32';

export interface GpuDTypeInfo {
  bits: 8 | 16 | 32;
  /** elements per 32-bit word */
  epw: 1 | 2 | 4;
  /** WGSL type kernels compute in; null for storage-only dtypes (fp8) */
  ct: ComputeType | null;
  float: boolean;
}

const INFO: Partial<Record<DType, GpuDTypeInfo>> = {
  f32: { bits: 32, epw: 1, ct: 'f32', float: true },
  f16: { bits: 16, epw: 2, ct: 'f32', float: true },
  bf16: { bits: 16, epw: 2, ct: 'f32', float: true },
  i32: { bits: 32, epw: 1, ct: 'i32', float: false },
  u32: { bits: 32, epw: 1, ct: 'u32', float: false },
  u8: { bits: 8, epw: 4, ct: 'u32', float: false },
  bool: { bits: 8, epw: 4, ct: 'u32', float: false },
  'fp8-e4m3': { bits: 8, epw: 4, ct: null, float: true },
  'fp8-e5m2': { bits: 8, epw: 4, ct: null, float: true },
};

export function gpuSupports(dtype: DType): boolean {
  return INFO[dtype] !== undefined;
}

export function gpuInfo(dtype: DType): GpuDTypeInfo {
  const i = INFO[dtype];
  if (!i) {
    throw new TypeError(
      `the webgpu backend cannot hold ${dtype} tensors (WGSL has no 64-bit floats); cast to f32 on the CPU first`,
    );
  }
  return i;
}

/** The compute type of a dtype, or a clear error for storage-only dtypes. */
export function computeType(dtype: DType, op: string): ComputeType {
  const ct = gpuInfo(dtype).ct;
  if (!ct)
    throw new TypeError(
      `${op}: ${dtype} is a storage-only dtype on webgpu; decode it first (fp8 codecs live in @dsv3/fp8)`,
    );
  return ct;
}

/** Bytes of storage for `size` elements, rounded up to whole 32-bit words. */
export function wordBytes(dtype: DType, size: number): number {
  const epw = gpuInfo(dtype).epw;
  return Math.ceil(size / epw) * 4;
}

/** 32-bit temporaries that row kernels write before packing into a 16/8-bit output. */
export function wideDType(dtype: DType): DType {
  const ct = gpuInfo(dtype).ct;
  if (ct === 'f32') return 'f32';
  if (ct === 'i32') return 'i32';
  return 'u32';
}
