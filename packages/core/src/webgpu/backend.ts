// The WebGPU backend: storage is a GPUBuffer (STORAGE | COPY_SRC | COPY_DST, a multiple of 16
// bytes, dtypes packed into 32-bit words), kernels are WGSL compute shaders registered under
// 'webgpu'. Work is batched into command encoders and submitted when a read or sync needs it.
//
// Errors that the GPU reports asynchronously (validation, out-of-memory, out-of-range indices in
// gathers/scatters) surface as exceptions from the next read() or sync(); a lost device makes every
// later call throw.
import type { Backend, KernelTensor, Storage } from '../backend.js';
import { allocStorageArray, storageArrayMatches, type DType, type StorageArray } from '../dtype.js';
import { CommandBatch } from './batch.js';
import { BufferPool } from './buffer-pool.js';
import { gpuInfo, gpuSupports, wordBytes } from './dtypes.js';
import { PipelineCache } from './pipelines.js';
import { BufferUsage, MapMode } from './constants.js';

export interface WebGpuAdapterInfo {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** true for software adapters (e.g. SwiftShader, or Dawn's view of lavapipe); undefined if not reported */
  isFallbackAdapter?: boolean;
  subgroupMinSize?: number;
  subgroupMaxSize?: number;
}

/** A subgroup-matrix shape the adapter supports (Dawn's chromium-experimental-subgroup-matrix). */
export interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

export interface WebGpuFeatures {
  shaderF16: boolean;
  subgroups: boolean;
  timestampQuery: boolean;
  /** the feature is enabled on the device */
  subgroupMatrix: boolean;
  subgroupMatrixConfigs: SubgroupMatrixConfig[];
}

export interface WebGpuLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupsPerDimension: number;
  minStorageBufferOffsetAlignment: number;
  minUniformBufferOffsetAlignment: number;
  maxStorageBuffersPerShaderStage: number;
}

export interface WebGpuBackendOptions {
  /** Dispatches per submitted command buffer before an automatic submit (default 64). */
  maxBatchDispatches?: number;
  /** Bytes of freed buffers kept for reuse (default 512 MiB). */
  maxPooledBytes?: number;
  /**
   * Treat storage bindings as limited to this many bytes (default: the device's
   * maxStorageBufferBindingSize). Lower it to exercise the chunked paths in tests.
   */
  bindingLimit?: number;
  /** Use the subgroup-matrix (tensor core) f16 GEMM when the device has it (default true). */
  subgroupMatrix?: boolean;
}

/** Device memory of one tensor. */
export class WebGpuStorage implements Storage {
  freed = false;
  tensors = 0;
  constructor(
    readonly buffer: GPUBuffer,
    /** logical bytes (elements x element size) */
    readonly byteLength: number,
    readonly backend: WebGpuBackend,
  ) {}
}

/** A compiled kernel plus how to bind it. */
export interface KernelCode {
  label: string;
  code: string;
  /** layout signature from wgsl.layoutKey() */
  layout: string;
}

const INDEX_ERRORS = ['gather', 'scatterAdd', 'takeAlong', 'scatterAlong'];

export class WebGpuBackend implements Backend {
  readonly name = 'webgpu';
  readonly device: GPUDevice;
  readonly adapterInfo: WebGpuAdapterInfo;
  readonly features: WebGpuFeatures;
  readonly limits: WebGpuLimits;
  /** bytes a single storage binding may span (chunking threshold) */
  readonly bindingLimit: number;
  readonly pipelines: PipelineCache;
  readonly batch: CommandBatch;
  readonly pool: BufferPool;
  /** set once the subgroup-matrix GEMM passed its self-test on this device */
  subgroupMatrixGemm: { config: SubgroupMatrixConfig; legacySyntax: boolean } | null = null;
  /** why the subgroup-matrix GEMM is not in use (when it is not) */
  subgroupMatrixStatus = 'not checked';
  /**
   * Buffers mapped for reading so far (tensor reads, syncs, timer reads): each one drains the queue,
   * so tests count them to prove a forward stays on the device.
   */
  readbacks = 0;

  private readonly staging: BufferPool;
  private readonly errFlag: GPUBuffer;
  private readonly deferred: string[] = [];
  /** error scopes (allocations, pipeline builds) whose verdict has not arrived yet */
  private readonly scopes = new Set<Promise<unknown>>();
  private fatal: Error | null = null;
  private disposed = false;
  private readonly finalizer: FinalizationRegistry<GPUBuffer>;
  private readonly options: WebGpuBackendOptions;

  constructor(
    device: GPUDevice,
    init: { adapterInfo: WebGpuAdapterInfo; features: WebGpuFeatures; options?: WebGpuBackendOptions },
  ) {
    this.device = device;
    this.adapterInfo = init.adapterInfo;
    this.features = init.features;
    this.options = init.options ?? {};
    const l = device.limits;
    this.limits = {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      minStorageBufferOffsetAlignment: l.minStorageBufferOffsetAlignment,
      minUniformBufferOffsetAlignment: l.minUniformBufferOffsetAlignment,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    };
    const limit = Math.min(this.options.bindingLimit ?? Infinity, this.limits.maxStorageBufferBindingSize);
    // Keep chunks aligned for every dtype (1024 elements of any size is a multiple of 256 bytes).
    this.bindingLimit = Math.max(4096, Math.floor(limit / 4096) * 4096);
    const report = (m: string): void => {
      this.deferred.push(m);
    };
    const track = (p: Promise<unknown>): void => {
      const q: Promise<unknown> = p.finally(() => this.scopes.delete(q));
      this.scopes.add(q);
    };
    this.pool = new BufferPool(
      device,
      BufferUsage.STORAGE | BufferUsage.COPY_SRC | BufferUsage.COPY_DST,
      this.limits.maxBufferSize,
      this.options.maxPooledBytes ?? 512 * 2 ** 20,
      report,
      'dsv3',
      track,
    );
    this.staging = new BufferPool(
      device,
      BufferUsage.MAP_READ | BufferUsage.COPY_DST,
      this.limits.maxBufferSize,
      64 * 2 ** 20,
      report,
      'dsv3:staging',
      track,
    );
    this.pipelines = new PipelineCache(device, report, track);
    this.batch = new CommandBatch(device, {
      maxDispatches: this.options.maxBatchDispatches ?? 64,
      arenaBytes: 256 * 1024,
      uniformAlign: Math.max(16, this.limits.minUniformBufferOffsetAlignment),
      onSubmit: () => this.pool.promote(),
    });
    this.errFlag = device.createBuffer({
      size: 16,
      usage: BufferUsage.STORAGE | BufferUsage.COPY_SRC | BufferUsage.COPY_DST,
      label: 'dsv3:index-errors',
    });
    this.finalizer = new FinalizationRegistry((buffer) => {
      if (!this.disposed) this.recycle(buffer);
    });
    device.onuncapturederror = (ev: GPUUncapturedErrorEvent) => {
      const kind = ev.error.constructor?.name ?? 'GPUError';
      this.deferred.push(`webgpu: ${kind}: ${ev.error.message}`);
    };
    void device.lost.then((info) => {
      if (!this.disposed)
        this.fatal = new Error(`webgpu: the device was lost (${info.reason}): ${info.message || 'no message'}`);
    });
  }

  supportsDType(dtype: DType): boolean {
    return gpuSupports(dtype);
  }

  // ---- storage ----

  /** Throws if the backend cannot run work (device lost or disposed). */
  checkAlive(): void {
    if (this.fatal) throw this.fatal;
  }

  /** Back to the pool; "pending" while recorded commands that may read it are not submitted. */
  private recycle(buffer: GPUBuffer): void {
    this.pool.release(buffer, this.batch.open);
  }

  private newStorage(dtype: DType, size: number, zero: boolean, forUpload = false): WebGpuStorage {
    this.checkAlive();
    gpuInfo(dtype);
    if (!Number.isInteger(size) || size < 0) throw new RangeError(`webgpu: invalid element count ${size}`);
    const bytes = wordBytes(dtype, size);
    const { buffer, reused } = this.pool.acquire(bytes, !forUpload);
    if (zero && reused) this.batch.clear(buffer);
    const s = new WebGpuStorage(buffer, size * (gpuInfo(dtype).bits / 8), this);
    this.finalizer.register(s, buffer, s);
    return s;
  }

  alloc(dtype: DType, size: number): WebGpuStorage {
    return this.newStorage(dtype, size, true);
  }

  /** Storage whose contents are undefined (kernel outputs that are fully overwritten). */
  allocUninit(dtype: DType, size: number): WebGpuStorage {
    return this.newStorage(dtype, size, false);
  }

  upload(dtype: DType, data: StorageArray): WebGpuStorage {
    if (!storageArrayMatches(dtype, data))
      throw new TypeError(`a ${data.constructor.name} cannot hold ${dtype} storage`);
    const s = this.newStorage(dtype, data.length, false, true);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength) as Uint8Array<ArrayBuffer>;
    if (bytes.byteLength % 4 === 0) {
      if (bytes.byteLength) this.device.queue.writeBuffer(s.buffer, 0, bytes);
    } else {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      padded.set(bytes);
      this.device.queue.writeBuffer(s.buffer, 0, padded);
    }
    return s;
  }

  /** This backend's storage behind a kernel tensor (with a clear error for anything else). */
  own(storage: Storage): WebGpuStorage {
    if (!(storage instanceof WebGpuStorage) || storage.backend !== this) {
      throw new Error('webgpu: this tensor does not live on this WebGPU backend; move it with toBackend()');
    }
    if (storage.freed) throw new Error('webgpu: use of freed storage');
    return storage;
  }

  /** The storage of a kernel input. */
  input(t: KernelTensor): WebGpuStorage {
    return this.own(t.storage);
  }

  async read(storage: Storage, dtype: DType, size: number): Promise<StorageArray> {
    this.checkAlive();
    const s = this.own(storage);
    const bytes = wordBytes(dtype, size);
    const flagAt = Math.ceil(bytes / 16) * 16;
    const { buffer: staging } = this.staging.acquire(flagAt + 16);
    if (bytes > 0) this.batch.copy(s.buffer, 0, staging, 0, bytes);
    this.batch.copy(this.errFlag, 0, staging, flagAt, 16);
    this.batch.flush();
    let out: StorageArray;
    let flags: number;
    try {
      await this.mapForRead(staging, flagAt + 16);
    } catch (e) {
      this.checkAlive();
      throw new Error(`webgpu: reading a ${dtype} tensor back failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    try {
      const mapped = staging.getMappedRange(0, flagAt + 16);
      out = allocStorageArray(dtype, size);
      new Uint8Array(out.buffer, out.byteOffset, out.byteLength).set(new Uint8Array(mapped, 0, out.byteLength));
      flags = new Uint32Array(mapped, flagAt, 1)[0]!;
    } finally {
      staging.unmap();
      this.staging.release(staging);
    }
    await this.settle();
    this.raiseDeferred(flags);
    return out;
  }

  /** Maps a staging buffer for reading (the only way data leaves the device), counted in `readbacks`. */
  private mapForRead(staging: GPUBuffer, bytes: number): Promise<void> {
    this.readbacks++;
    return staging.mapAsync(MapMode.READ, 0, bytes);
  }

  free(storage: Storage): void {
    if (!(storage instanceof WebGpuStorage) || storage.backend !== this || storage.freed) return;
    storage.freed = true;
    this.finalizer.unregister(storage);
    if (!this.disposed) this.recycle(storage.buffer);
  }

  /** Resolves when all submitted work is done; throws errors the GPU reported meanwhile. */
  async sync(): Promise<void> {
    this.checkAlive();
    const { buffer: staging } = this.staging.acquire(16);
    this.batch.copy(this.errFlag, 0, staging, 0, 16);
    this.batch.flush();
    let flags = 0;
    try {
      await this.mapForRead(staging, 16);
      flags = new Uint32Array(staging.getMappedRange(0, 16), 0, 1)[0]!;
      staging.unmap();
    } catch (e) {
      this.checkAlive();
      throw e;
    } finally {
      this.staging.release(staging);
    }
    await this.settle();
    this.raiseDeferred(flags);
  }

  /**
   * Overwrites `data.byteLength` bytes of a storage in place from byte `byteOffset` (a multiple of 4).
   * Recorded work is submitted first, so the write lands after every dispatch recorded before it.
   */
  writeStorage(storage: Storage, byteOffset: number, data: ArrayBufferView): void {
    const s = this.own(storage);
    if (byteOffset % 4 !== 0 || data.byteLength % 4 !== 0) {
      throw new RangeError(
        `webgpu: writeStorage needs 4-byte aligned offsets and sizes, got offset ${byteOffset}, ${data.byteLength} bytes`,
      );
    }
    if (byteOffset < 0 || byteOffset + data.byteLength > s.byteLength) {
      throw new RangeError(
        `webgpu: writeStorage of ${data.byteLength} bytes at ${byteOffset} is outside the ${s.byteLength}-byte storage`,
      );
    }
    this.batch.flush();
    this.device.queue.writeBuffer(s.buffer, byteOffset, data.buffer, data.byteOffset, data.byteLength);
  }

  /** Submits recorded work now (reads and syncs do this themselves). */
  flush(): void {
    this.batch.flush();
  }

  /** Waits for outstanding error scopes so their errors are known. */
  private async settle(): Promise<void> {
    while (this.scopes.size) await Promise.all([...this.scopes]);
  }

  private raiseDeferred(flags: number): void {
    this.checkAlive();
    if (flags) {
      this.device.queue.writeBuffer(this.errFlag, 0, new Uint32Array(4));
      const ops = INDEX_ERRORS.filter((_, i) => flags & (1 << i));
      throw new RangeError(
        `webgpu: ${ops.join(', ')}: an index was out of range (the affected outputs hold zeros / were skipped)`,
      );
    }
    if (this.deferred.length) {
      const msgs = this.deferred.splice(0);
      throw new Error(msgs.join('\n'));
    }
  }

  /** The buffer the index kernels flag out-of-range indices in (bit per op, see INDEX_ERRORS). */
  get indexErrorBuffer(): GPUBuffer {
    return this.errFlag;
  }

  // ---- dispatch ----

  /** Records one dispatch of `kernel` with storage `buffers` (bindings 1..n) and u32 `params`. */
  run(
    kernel: KernelCode,
    buffers: GPUBufferBinding[],
    params: ArrayLike<number>,
    workgroups: readonly [number, number, number],
  ): void {
    this.checkAlive();
    if (workgroups[0] === 0 || workgroups[1] === 0 || workgroups[2] === 0) return;
    const p = this.pipelines.get(kernel.code, kernel.layout, kernel.label);
    if (p.paramWords && params.length > p.paramWords)
      throw new Error(
        `webgpu: kernel '${kernel.label}' got ${params.length} parameters for a block of ${p.paramWords}`,
      );
    const u = new Uint32Array(Math.max(p.paramWords, Math.ceil(params.length / 4) * 4, 4));
    for (let i = 0; i < params.length; i++) u[i] = params[i]! >>> 0;
    this.batch.dispatch(p.pipeline, p.layout, buffers, u, workgroups);
  }

  /** A binding of a storage: the whole logical extent, or `bytes` from byte `offset`. */
  bind(s: WebGpuStorage, offset = 0, bytes?: number): GPUBufferBinding {
    const want = bytes ?? Math.ceil(s.byteLength / 4) * 4 - offset;
    const size = Math.min(s.buffer.size - offset, Math.max(16, Math.ceil(want / 16) * 16));
    return { buffer: s.buffer, offset, size };
  }

  /**
   * Times GPU work: with timestamp queries the span of one compute pass holding every dispatch
   * `fn` records (null if it recorded none); otherwise wall time until the queue drains.
   */
  async timeGpu(fn: () => void): Promise<{ ms: number; timestamps: boolean } | null> {
    this.checkAlive();
    if (this.features.timestampQuery) {
      const qs = this.device.createQuerySet({ type: 'timestamp', count: 2 });
      const resolve = this.device.createBuffer({ size: 16, usage: BufferUsage.QUERY_RESOLVE | BufferUsage.COPY_SRC });
      const { buffer: staging } = this.staging.acquire(16);
      let ok = false;
      this.batch.startTimer(qs);
      try {
        fn();
      } finally {
        ok = this.batch.stopTimer(resolve);
        if (ok) this.batch.copy(resolve, 0, staging, 0, 16);
        this.batch.flush();
      }
      if (!ok) {
        this.staging.release(staging);
        qs.destroy();
        resolve.destroy();
        return null;
      }
      await this.mapForRead(staging, 16);
      const t = new BigUint64Array(staging.getMappedRange(0, 16).slice(0));
      staging.unmap();
      this.staging.release(staging);
      qs.destroy();
      resolve.destroy();
      this.raiseDeferred(0);
      const ns = Number(t[1]! - t[0]!);
      return { ms: ns / 1e6, timestamps: true };
    }
    this.batch.flush();
    await this.device.queue.onSubmittedWorkDone();
    const t0 = performance.now();
    fn();
    this.batch.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.raiseDeferred(0);
    return { ms: performance.now() - t0, timestamps: false };
  }

  /** Pool and pipeline counters (for tests and tuning). */
  stats(): {
    buffersCreated: number;
    buffersReused: number;
    pooledBytes: number;
    liveBytes: number;
    pipelines: number;
    submits: number;
    dispatches: number;
    readbacks: number;
  } {
    const p = this.pool.stats;
    return {
      buffersCreated: p.created,
      buffersReused: p.reused,
      pooledBytes: p.pooledBytes,
      liveBytes: p.liveBytes,
      pipelines: this.pipelines.size,
      submits: this.batch.submits,
      dispatches: this.batch.totalDispatches,
      readbacks: this.readbacks,
    };
  }

  /** Destroys the device (so the process can exit); the backend is unusable afterwards. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.fatal = new Error('webgpu: this backend was disposed');
    try {
      this.batch.destroy();
      this.pool.trim();
      this.staging.trim();
      this.errFlag.destroy();
    } finally {
      this.device.onuncapturederror = null;
      this.device.destroy();
    }
  }

  get isDisposed(): boolean {
    return this.disposed;
  }
}

/** Whether `b` is core's WebGPU backend (so its device, pipeline cache and buffer pool can be used). */
export function isWebGpu(b: Backend): b is WebGpuBackend {
  return b instanceof WebGpuBackend;
}

/**
 * The WebGPU backend a kernel was called with, typed: how a package's WebGPU kernels reach the
 * device, the pipeline cache (`run`), the buffer pool (`alloc`, `allocUninit`, `input`) and `bind`.
 */
export function asWebGpu(b: Backend, op = 'a webgpu kernel'): WebGpuBackend {
  if (!isWebGpu(b)) throw new Error(`${op}: needs @dsv3/core's WebGpuBackend, got the '${b.name}' backend`);
  return b;
}
