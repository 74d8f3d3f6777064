// A pool of GPU buffers by size class, so the allocation churn of eager execution (every op makes
// a new tensor) reuses buffers instead of creating and destroying them. Sizes round up to classes
// of at most 12.5% waste; buffers are multiples of 16 bytes (vec4 bindings).
//
// A buffer freed while recorded-but-unsubmitted commands may still read it goes to a "pending"
// list: later commands of the same encoder may write it (GPU execution is in order), but a
// queue.writeBuffer (which runs before those commands) may not, so uploads only take buffers from
// the main list. Pending buffers join the main list when the encoder is submitted.

/** The size class (bytes) a request of `bytes` is served from. */
export function sizeClass(bytes: number): number {
  const b = Math.max(16, Math.ceil(bytes / 16) * 16);
  if (b <= 256) return 2 ** Math.ceil(Math.log2(b));
  const step = 2 ** Math.floor(Math.log2(b)) / 8;
  return Math.ceil(b / step) * step;
}

export interface PoolStats {
  /** buffers created over the pool's life */
  created: number;
  /** requests served by a pooled buffer */
  reused: number;
  /** bytes sitting in the pool now */
  pooledBytes: number;
  /** bytes of buffers handed out and not yet returned */
  liveBytes: number;
}

export class BufferPool {
  private readonly free = new Map<number, GPUBuffer[]>();
  private readonly pending = new Map<number, GPUBuffer[]>();
  readonly stats: PoolStats = { created: 0, reused: 0, pooledBytes: 0, liveBytes: 0 };

  constructor(
    private readonly device: GPUDevice,
    private readonly usage: GPUBufferUsageFlags,
    private readonly maxBufferSize: number,
    private readonly maxPooledBytes: number,
    /** called when an allocation fails on the device (out of memory) */
    private readonly onError: (message: string) => void,
    private readonly label = 'dsv3',
    /** receives the promise of each pending error scope (so reads can wait for them) */
    private readonly track: (p: Promise<unknown>) => void = () => undefined,
  ) {}

  /**
   * A buffer of at least `bytes`; `reused` tells whether it may hold stale data. `encoderOrdered`:
   * the caller only writes it through the current command encoder (so pending buffers qualify).
   */
  acquire(bytes: number, encoderOrdered = false): { buffer: GPUBuffer; reused: boolean } {
    let size = sizeClass(bytes);
    if (size > this.maxBufferSize) size = Math.ceil(bytes / 16) * 16;
    if (size > this.maxBufferSize) {
      throw new RangeError(
        `webgpu: a buffer of ${bytes} bytes exceeds the device's maxBufferSize (${this.maxBufferSize} bytes)`,
      );
    }
    const hit = (encoderOrdered ? this.pending.get(size)?.pop() : undefined) ?? this.free.get(size)?.pop();
    if (hit) {
      this.stats.reused++;
      this.stats.pooledBytes -= size;
      this.stats.liveBytes += size;
      return { buffer: hit, reused: true };
    }
    // Out-of-memory is reported asynchronously; it becomes an error at the next read or sync.
    this.device.pushErrorScope('out-of-memory');
    const buffer = this.device.createBuffer({ size, usage: this.usage, label: `${this.label}:${size}` });
    this.track(
      this.device.popErrorScope().then(
        (err) => {
          if (err)
            this.onError(
              `webgpu: out of memory allocating a buffer of ${size} bytes (${this.stats.liveBytes} bytes live): ${err.message}`,
            );
        },
        () => undefined,
      ),
    );
    this.stats.created++;
    this.stats.liveBytes += size;
    return { buffer, reused: false };
  }

  /** Returns a buffer to the pool (or destroys it when the pool is full). */
  release(buffer: GPUBuffer, pending = false): void {
    const size = buffer.size;
    this.stats.liveBytes -= size;
    if (this.stats.pooledBytes + size > this.maxPooledBytes) {
      buffer.destroy();
      return;
    }
    const map = pending ? this.pending : this.free;
    let list = map.get(size);
    if (!list) map.set(size, (list = []));
    list.push(buffer);
    this.stats.pooledBytes += size;
  }

  /** The encoder that might still read the pending buffers was submitted: they are free now. */
  promote(): void {
    for (const [size, list] of this.pending) {
      let dst = this.free.get(size);
      if (!dst) this.free.set(size, (dst = []));
      dst.push(...list);
    }
    this.pending.clear();
  }

  /** Destroys every pooled buffer (e.g. to make room after an out-of-memory error). */
  trim(): void {
    for (const map of [this.free, this.pending]) for (const list of map.values()) for (const b of list) b.destroy();
    this.free.clear();
    this.pending.clear();
    this.stats.pooledBytes = 0;
  }
}
