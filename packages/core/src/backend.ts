// The shared backend interface: a backend is storage (alloc / write / read / free) plus the kernels
// registered for it. Kernels live in one registry keyed by (op, backend), so any package can add a
// kernel for any backend without touching core.
import type { DType, StorageArray } from './dtype.js';
import type { Shape } from './shape.js';

/** An opaque handle to device memory; each backend defines what is behind it. */
export interface Storage {
  readonly byteLength: number;
  /**
   * Live tensors holding this storage (reshapes and detached copies share it), counted by Tensor so
   * that dispose() frees it once nobody uses it. Starts at 0.
   */
  tensors: number;
}

export interface Backend {
  /** Registry key: 'cpu', 'webgpu', ... */
  readonly name: string;
  /** Dtypes this backend can hold; tensors of others are rejected with a clear error. */
  supportsDType(dtype: DType): boolean;
  /** New zero-filled storage for `size` elements of `dtype`. */
  alloc(dtype: DType, size: number): Storage;
  /** New storage holding a copy of `data` (the dtype's raw storage array). */
  upload(dtype: DType, data: StorageArray): Storage;
  /** Reads storage back to the host; resolves once all queued work that writes it is done. */
  read(storage: Storage, dtype: DType, size: number): Promise<StorageArray>;
  /** Synchronous read, only where the backend can do it (the CPU). */
  readSync?(storage: Storage, dtype: DType, size: number): StorageArray;
  free(storage: Storage): void;
  /** Resolves when all submitted work has finished. */
  sync(): Promise<void>;
  /** Releases the device, so processes can exit. */
  dispose?(): void;
}

/** What a kernel sees of a tensor: contiguous row-major storage with a shape and dtype. */
export interface KernelTensor {
  storage: Storage;
  shape: Shape;
  dtype: DType;
}

// biome-ignore lint/suspicious/noExplicitAny: the registry holds kernels of every attrs type; callers name theirs
export type Kernel<A = any> = (backend: Backend, inputs: KernelTensor[], attrs: A) => KernelTensor[];

const registry = new Map<string, Map<string, Kernel>>();

/**
 * Registers the kernel of `op` on `backend`. Each package registers its kernels once, when its entry
 * module is imported; a second registration of the same (op, backend) is an error, so two packages
 * (or two copies of one) can never silently replace each other's kernels.
 */
export function registerKernel<A>(op: string, backend: string, kernel: Kernel<A>): void {
  let byBackend = registry.get(op);
  if (!byBackend) registry.set(op, (byBackend = new Map()));
  if (byBackend.has(backend)) {
    throw new Error(
      `registerKernel: op '${op}' already has a kernel for backend '${backend}'; each (op, backend) is registered once ` +
        '(is a package loaded twice, e.g. both from its sources and from its build?)',
    );
  }
  byBackend.set(backend, kernel as Kernel);
}

export function hasKernel(op: string, backend: string): boolean {
  return registry.get(op)?.has(backend) ?? false;
}

export function getKernel<A>(op: string, backend: string): Kernel<A> {
  const byBackend = registry.get(op);
  const k = byBackend?.get(backend);
  if (!k) {
    const have = byBackend ? [...byBackend.keys()].join(', ') : 'none';
    throw new Error(`op '${op}' has no kernel for backend '${backend}' (registered for: ${have})`);
  }
  return k as Kernel<A>;
}

export function listKernels(backend?: string): string[] {
  return [...registry.entries()]
    .filter(([, m]) => !backend || m.has(backend))
    .map(([op]) => op)
    .sort();
}

/** Runs a registered kernel on KernelTensors (inside kernels; on Tensors use `exec`). */
export function runKernel<A>(op: string, backend: Backend, inputs: KernelTensor[], attrs: A): KernelTensor[] {
  return getKernel<A>(op, backend.name)(backend, inputs, attrs);
}
