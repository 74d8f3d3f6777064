// What every FP8 WebGPU kernel shares: the error flag of non-finite inputs (raised by the quantizers,
// reported by checkFp8Errors), workgroup-grid and binding-size checks, and small helpers.
//
// NON-FINITE INPUT cannot throw from a GPU kernel: a tile holding NaN/±Inf gets a NaN scale and NaN
// bytes (0x7f, sign kept), and a flag is raised that `checkFp8Errors(backend)` reports (and clears)
// as a RangeError. The CPU kernels throw at once.
import { asWebGpu, type Backend, type DType, type KernelTensor, type Storage, type WebGpuBackend } from '@dsv3/core';

// ---- error flags (non-finite inputs) ----

export const ERR_BITS = { quantizeAct: 1, quantizeActT: 2, quantizeWeight: 4 } as const;
const flags = new WeakMap<GPUDevice, GPUBuffer>();

export function errorBuffer(be: WebGpuBackend): GPUBuffer {
  let b = flags.get(be.device);
  if (!b) {
    // STORAGE | COPY_SRC | COPY_DST
    b = be.device.createBuffer({ size: 16, usage: 0x80 | 0x04 | 0x08, label: 'dsv3:fp8-errors' });
    be.device.queue.writeBuffer(b, 0, new Uint32Array(4));
    flags.set(be.device, b);
  }
  return b;
}

/**
 * WebGPU: resolves once every FP8 kernel recorded so far has run, and rejects with a RangeError if
 * a quantization met NaN/±Inf input since the last check (the flag is cleared). The affected
 * tiles hold NaN scales and NaN bytes. CPU backends throw at the call instead; there this resolves.
 */
export async function checkFp8Errors(backend: Backend): Promise<void> {
  if (backend.name !== 'webgpu') return;
  const be = asWebGpu(backend, 'checkFp8Errors');
  const flag = flags.get(be.device);
  if (!flag) return;
  be.flush();
  // MAP_READ | COPY_DST
  const staging = be.device.createBuffer({ size: 16, usage: 0x01 | 0x08, label: 'dsv3:fp8-errors-read' });
  const enc = be.device.createCommandEncoder();
  enc.copyBufferToBuffer(flag, 0, staging, 0, 16);
  be.device.queue.submit([enc.finish()]);
  await staging.mapAsync(1);
  const bits = new Uint32Array(staging.getMappedRange().slice(0))[0]!;
  staging.unmap();
  staging.destroy();
  if (!bits) return;
  be.device.queue.writeBuffer(flag, 0, new Uint32Array(4));
  const ops = Object.entries(ERR_BITS)
    .filter(([, bit]) => bits & bit)
    .map(([op]) => op);
  throw new RangeError(
    `@dsv3/fp8 (webgpu): non-finite input (NaN or ±Infinity) in ${ops.join(', ')}; the affected tiles have NaN scales and NaN bytes`,
  );
}

// ---- helpers ----

export const size = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

export function f32Bits(v: number): number {
  return new Uint32Array(new Float32Array([v]).buffer)[0]!;
}

/** Workgroup counts for `groups` workgroups, split over x and y beyond the per-dimension limit. */
export function grid(groups: number, maxPerDim: number): [number, number, number] {
  if (groups <= maxPerDim) return [Math.max(groups, 1), 1, 1];
  const y = Math.ceil(groups / maxPerDim);
  if (y > maxPerDim) throw new RangeError(`@dsv3/fp8 (webgpu): ${groups} workgroups exceed the dispatch limit`);
  return [maxPerDim, y, 1];
}

export function checkBinding(be: WebGpuBackend, what: string, bytes: number): void {
  if (bytes > be.bindingLimit) {
    throw new RangeError(
      `@dsv3/fp8 (webgpu): ${what} needs ${bytes} bytes in one storage binding, over this device's limit of ${be.bindingLimit} bytes (maxStorageBufferBindingSize); split the tensor`,
    );
  }
}

export const outT = (storage: Storage, shape: readonly number[], dtype: DType): KernelTensor => ({
  storage,
  shape: [...shape],
  dtype,
});
