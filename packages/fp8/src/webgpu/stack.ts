// Per-expert tensors as one device buffer: a WGSL shader has only ~8-10 storage bindings, so a kernel
// over E experts binds one stack [E, ...] instead of E buffers. Each part is copied on the device at a
// 4-byte-aligned stride (sub-word dtypes — bf16, fp8 — keep every expert on a word boundary, so word
// loads stay aligned). A caller that passes a DeviceStackCache keeps the stack between calls; it is
// rebuilt only when the parts' storages change (parameters get new storages when an optimizer assigns
// them, checkpoint weights never).
import type { KernelTensor, WebGpuBackend, WebGpuStorage } from '@dsv3/core';

/** Where a stack is kept between calls (opaque to the caller). */
export interface DeviceStackCache {
  parts: unknown[];
  stacked: unknown;
}

export const newDeviceStackCache = (): DeviceStackCache => ({ parts: [], stacked: null });

export interface DeviceStack {
  stacked: WebGpuStorage;
  /** bytes from one part to the next (a multiple of 4) */
  strideBytes: number;
  /** a stack made for this call only: free it after the kernel that reads it is recorded */
  temporary: boolean;
}

/** The parts (same dtype and shape) as one stack: the cached one when its parts are these storages. */
export function stackOnDevice(be: WebGpuBackend, ws: KernelTensor[], cache?: DeviceStackCache): DeviceStack {
  const parts = ws.map((w) => be.input(w));
  const strideBytes = Math.ceil(parts[0]!.byteLength / 4) * 4;
  const hit = cache?.stacked as WebGpuStorage | null | undefined;
  if (cache && hit && !hit.freed && cache.parts.length === parts.length && cache.parts.every((p, i) => p === parts[i]))
    return { stacked: hit, strideBytes, temporary: false };
  // allocated as u32 words: the stride may pad each part
  const stacked = be.allocUninit('u32', (ws.length * strideBytes) / 4);
  parts.forEach((p, e) => be.batch.copy(p.buffer, 0, stacked.buffer, e * strideBytes, strideBytes));
  if (!cache) return { stacked, strideBytes, temporary: true };
  if (hit && !hit.freed) be.free(hit);
  cache.parts = parts;
  cache.stacked = stacked;
  return { stacked, strideBytes, temporary: false };
}
