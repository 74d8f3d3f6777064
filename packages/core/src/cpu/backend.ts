// The CPU backend: storage is a host TypedArray; kernels run synchronously when dispatched.
// Weights can instead be made resident: placed once in the GEMM engine's WebAssembly memory, where
// the matmul kernels stream them in place (no per-call copy). Resident storage is returned to the
// engine by free() (Tensor.dispose) or, as a backstop, when its storage object is collected; views
// of it (subarray storages made by kernels) must not outlive the storage they view.
import { finishDeferred, isDeferred } from '../deferred.js';
import { completeRows } from '../io/rows-on-lookup.js';
import type { Backend, KernelTensor, Storage } from '../backend.js';
import {
  allocStorageArray,
  copyOf,
  fromNumeric,
  toNumeric,
  storageArrayMatches,
  type DType,
  type NumericArray,
  type StorageArray,
} from '../dtype.js';
import { sizeOf, type Shape } from '../shape.js';
import { allocResident, allocResidentRun, freeResident, type RunPiece } from './gemm/index.js';

export class CpuStorage implements Storage {
  tensors = 0;
  constructor(public readonly data: StorageArray) {}
  get byteLength(): number {
    return this.data.byteLength;
  }
}

// Backstop for resident storage nobody disposed: the block goes back when the storage object is collected.
const residentBlocks = new FinalizationRegistry<StorageArray>((a) => freeResident(a));

/** Storage in the engine's memory; released once, by free() or by the finalizer. */
export class ResidentStorage extends CpuStorage {
  private live = true;
  constructor(data: StorageArray) {
    super(data);
    residentBlocks.register(this, data, this);
  }
  release(): void {
    if (!this.live) return;
    this.live = false;
    residentBlocks.unregister(this);
    freeResident(this.data);
  }
}

/**
 * Debug mode (the environment variable DSV3_POISON_RECYCLED=1): memory handed back for reuse — the free
 * list's arrays (pool.ts), a step's released output blocks (step-outputs.ts), spare copies (below) — is
 * filled with NaN, so a reader that kept it computes NaN instead of its next owner's values.
 */
export const POISON_RECYCLED_BY_DEFAULT =
  (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.DSV3_POISON_RECYCLED === '1';

/**
 * Host storage of a copy that goes back to a spare list of its length once its tensors are disposed, for
 * the next copy of that length (a decode step's kept logits, step-outputs.ts: a fresh 0.5 MB array each
 * step cost its zeroing and page faults, and V8 collections for its external memory). Each length keeps a
 * few spares; an undisposed copy is left to the garbage collector.
 */
export class SpareableStorage extends CpuStorage {
  private live = true;
  /** A spare array of `n` f32 elements (stale values: the caller overwrites all of it), or null. */
  static take(n: number): Float32Array | null {
    return spareArrays.get(n)?.pop() ?? null;
  }
  release(): void {
    if (!this.live) return;
    this.live = false;
    const a = this.data as Float32Array;
    if (POISON_RECYCLED_BY_DEFAULT) a.fill(Number.NaN); // a reader that kept it past dispose computes NaN
    let list = spareArrays.get(a.length);
    if (!list) spareArrays.set(a.length, (list = []));
    if (list.length < SPARES_PER_LENGTH) list.push(a);
  }
}
const SPARES_PER_LENGTH = 2;
const spareArrays = new Map<number, Float32Array[]>();

// Zeroed placeholders of deferred uploads come from slabs larger than glibc's largest mmap threshold
// (32 MiB), which the OS maps lazily: a page nobody writes costs no memory. An array malloc takes
// from memory the heap recycled is cleared by calloc, i.e. written, so placeholders would cost their
// size however long they stay unwritten.
const SLAB_BYTES = 64 * 2 ** 20;
const SLAB_MIN_BYTES = 64 * 2 ** 10;
let slab = new ArrayBuffer(0);
let slabUsed = 0;

function untouchedZeros(dtype: DType, size: number): StorageArray {
  const kind = allocStorageArray(dtype, 0);
  const bytes = size * kind.BYTES_PER_ELEMENT;
  // small ones cost little; past half a slab malloc maps them from the OS itself
  if (bytes < SLAB_MIN_BYTES || bytes > SLAB_BYTES / 2) return allocStorageArray(dtype, size);
  const at = Math.ceil(slabUsed / 8) * 8;
  if (at + bytes > slab.byteLength) {
    slab = new ArrayBuffer(SLAB_BYTES);
    slabUsed = 0;
    return untouchedZeros(dtype, size);
  }
  slabUsed = at + bytes;
  return new (kind.constructor as new (b: ArrayBuffer, offset: number, length: number) => StorageArray)(slab, at, size);
}

export class CpuBackend implements Backend {
  readonly name = 'cpu';
  private deferring = 0;
  private onDeferred: ((source: StorageArray, placeholder: CpuStorage) => void) | undefined;
  /**
   * Runs `build` with uploads turned into zeroed allocations (pages the OS maps lazily): for building
   * modules whose every parameter is loaded right after, so the placeholder values cost no memory.
   * `onUpload` sees each upload's source array with the placeholder that stands for it (so a caller
   * can tell which parameter a value it handed to a constructor became).
   */
  deferUploads<T>(build: () => T, onUpload?: (source: StorageArray, placeholder: CpuStorage) => void): T {
    const outer = this.onDeferred;
    this.deferring++;
    this.onDeferred = onUpload ?? outer;
    try {
      return build();
    } finally {
      this.deferring--;
      this.onDeferred = outer;
    }
  }
  supportsDType(): boolean {
    return true;
  }
  alloc(dtype: DType, size: number): CpuStorage {
    return new CpuStorage(allocStorageArray(dtype, size));
  }
  upload(dtype: DType, data: StorageArray): CpuStorage {
    if (!storageArrayMatches(dtype, data))
      throw new TypeError(`a ${data.constructor.name} cannot hold ${dtype} storage`);
    if (this.deferring) {
      const placeholder = new CpuStorage(untouchedZeros(dtype, data.length));
      this.onDeferred?.(data, placeholder);
      return placeholder;
    }
    return new CpuStorage(copyOf(data));
  }
  readSync(storage: Storage, _dtype: DType, size: number): StorageArray {
    const d = (storage as CpuStorage).data;
    if (isDeferred(d)) finishDeferred();
    completeRows(d); // a table read on lookup: every row, for a read of it all
    return copyOf(d, size);
  }
  read(storage: Storage, dtype: DType, size: number): Promise<StorageArray> {
    return Promise.resolve(this.readSync(storage, dtype, size));
  }
  /**
   * Zero-filled storage in the GEMM engine's memory, where matmul reads it in place (a weight);
   * plain host storage when the engine is unavailable or full. `zero` false leaves the engine's block
   * unfilled (stale values): only for an output its kernel writes whole. `pageOffset`: the block starts
   * that far past a 4 KiB page boundary (for bytes mapped from a file; allocResident).
   */
  allocResident(dtype: DType, size: number, zero = true, pageOffset?: number): CpuStorage {
    const a = allocResident(dtype, size, zero, pageOffset);
    return a ? new ResidentStorage(a) : this.alloc(dtype, size);
  }
  /**
   * Resident storage for tensors side by side as a file lays them out, the first at `fileOffset` of it
   * (allocResidentRun: one mapping of the file covers them), or null where the engine cannot hold them
   * together. Not zeroed.
   */
  allocResidentRun(pieces: readonly RunPiece[], fileOffset: number): CpuStorage[] | null {
    return allocResidentRun(pieces, fileOffset)?.map((a) => new ResidentStorage(a)) ?? null;
  }
  free(storage: Storage): void {
    // Host memory is reclaimed by the garbage collector (a spareable copy's array kept for the next copy);
    // resident blocks go back to the engine.
    if (storage instanceof ResidentStorage || storage instanceof SpareableStorage) storage.release();
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
  if (values.length !== sizeOf(shape))
    throw new Error(`internal: ${values.length} values for shape [${shape.join(', ')}]`);
  return { storage: new CpuStorage(fromNumeric(dtype, values)), shape: [...shape], dtype };
}

/** Wraps an existing storage array of `dtype` without conversion. */
export function wrap(dtype: DType, shape: Shape, data: StorageArray): KernelTensor {
  return { storage: new CpuStorage(data), shape: [...shape], dtype };
}
