// The CPU backend: storage is a host TypedArray; kernels run synchronously when dispatched.
import type { Backend, KernelTensor, Storage } from '../backend.js';
import { allocStorageArray, fromNumeric, toNumeric, storageArrayMatches, type DType, type NumericArray, type StorageArray } from '../dtype.js';
import { sizeOf, type Shape } from '../shape.js';

export class CpuStorage implements Storage {
  constructor(public readonly data: StorageArray) {}
  get byteLength(): number {
    return this.data.byteLength;
  }
}

export class CpuBackend implements Backend {
  readonly name = 'cpu';
  supportsDType(): boolean {
    return true;
  }
  alloc(dtype: DType, size: number): CpuStorage {
    return new CpuStorage(allocStorageArray(dtype, size));
  }
  upload(dtype: DType, data: StorageArray): CpuStorage {
    if (!storageArrayMatches(dtype, data)) throw new TypeError(`a ${data.constructor.name} cannot hold ${dtype} storage`);
    return new CpuStorage(data.slice() as StorageArray);
  }
  readSync(storage: Storage, _dtype: DType, size: number): StorageArray {
    const d = (storage as CpuStorage).data;
    return (d.length === size ? d.slice() : d.subarray(0, size).slice()) as StorageArray;
  }
  read(storage: Storage, dtype: DType, size: number): Promise<StorageArray> {
    return Promise.resolve(this.readSync(storage, dtype, size));
  }
  free(): void {
    // Host memory is reclaimed by the garbage collector.
  }
  sync(): Promise<void> {
    return Promise.resolve();
  }
}

export const cpu = new CpuBackend();

/** The raw storage array behind a kernel tensor. */
export function raw(t: KernelTensor): StorageArray {
  return (t.storage as CpuStorage).data;
}

/** The tensor's values as numbers (f16/bf16 decoded to f32, others as stored). */
export function num(t: KernelTensor): NumericArray {
  return toNumeric(t.dtype, raw(t));
}

/** A float working array for computing a result of `dtype`: f64 stays f64, all other floats compute in f32. */
export function floatArray(dtype: DType, size: number): Float32Array | Float64Array {
  return dtype === 'f64' ? new Float64Array(size) : new Float32Array(size);
}

/** Wraps computed numbers as a kernel tensor of `dtype`, encoding f16/bf16. */
export function result(dtype: DType, shape: Shape, values: ArrayLike<number>): KernelTensor {
  if (values.length !== sizeOf(shape)) throw new Error(`internal: ${values.length} values for shape [${shape.join(', ')}]`);
  return { storage: new CpuStorage(fromNumeric(dtype, values)), shape: [...shape], dtype };
}

/** Wraps an existing storage array of `dtype` without conversion. */
export function wrap(dtype: DType, shape: Shape, data: StorageArray): KernelTensor {
  return { storage: new CpuStorage(data), shape: [...shape], dtype };
}
