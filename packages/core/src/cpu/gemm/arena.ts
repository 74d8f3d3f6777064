// The byte allocator over the GEMM engine's WebAssembly memory: resident weights, per-thread packing
// workspaces and the scratch that non-resident operands are copied into all live here, so kernels read
// them in place. First fit over an address-ordered free list with coalescing; the memory grows (never
// shrinks) up to its maximum. Shared memory is never detached, so typed-array views stay valid after
// a grow; views made through `view` are recognised later as resident (their buffer is remembered).
import type { DType, StorageArray } from '../../dtype.js';

/** A WebAssembly memory page, the unit the memory grows by. */
export const PAGE = 65536;
/**
 * The memory grows in whole steps of this many bytes (address space only: pages cost memory when first
 * touched): grown a block at a time, the writable mapping would end inside the 2 MiB range a block's
 * first touch falls in nearly every time, and the kernel then backs it with 4 KiB pages, not a huge one.
 */
export const GROW_STEP = 64 << 20;
/** Every block starts on a cache line (and a v128 boundary), unless placed at a page offset. */
export const ALIGN = 64;
/** The operating system's page (a block placed at a page offset falls there within one of these). */
export const OS_PAGE = 4096;
/** A transparent huge page (x86-64, arm64 with 4 KiB pages). */
export const HUGE_PAGE = 2 << 20;

interface Block {
  at: number;
  bytes: number;
}

export class Arena {
  private free: Block[] = [];
  private top: number;
  /** The highest top so far: bump space below it held earlier blocks (not zero). */
  private highWater: number;
  private readonly used = new Map<number, number>();
  /** Blocks handed out at a page offset: the address handed out → the block's start. */
  private readonly shifted = new Map<number, number>();
  private usedTotal = 0;
  /** Blocks allocated with a reserve (resident weights) and their bytes: the reserve is checked against these. */
  private readonly reserved = new Set<number>();
  private reservedTotal = 0;
  private readonly buffers = new WeakSet<ArrayBufferLike>();

  /** Manages [base, maxBytes) of `memory`. */
  constructor(
    private readonly memory: WebAssembly.Memory,
    base: number,
    readonly maxBytes: number,
  ) {
    this.top = align(base);
    this.highWater = this.top;
    this.buffers.add(memory.buffer);
  }

  /** Bytes currently handed out. */
  get usedBytes(): number {
    return this.usedTotal;
  }

  /** The memory's current buffer (recorded as ours, so views of it count as resident). */
  buffer(): ArrayBufferLike {
    const b = this.memory.buffer;
    this.buffers.add(b);
    return b;
  }

  /** Whether the memory is shared (never detached by a grow, so views made now stay valid). */
  get shared(): boolean {
    return typeof SharedArrayBuffer !== 'undefined' && this.memory.buffer instanceof SharedArrayBuffer;
  }

  /** Whether `a` is a view of this memory (then its byteOffset is its address). */
  owns(a: ArrayBufferView): boolean {
    return this.buffers.has(a.buffer);
  }

  /**
   * A block of at least `bytes` bytes (zero-filled unless `zero` is false: a kernel output written
   * whole), or null when the memory cannot hold it. With a `reserve` (resident weights and kernel
   * outputs), such blocks together stay `reserve` bytes below the maximum: that room is left to
   * workspaces and scratch (which may already be using it). With a `pageOffset`, the address handed
   * out lies that many bytes past an OS page boundary (a tensor whose pages map from a file, where its
   * bytes start that far into a page), in a block up to a page longer.
   */
  alloc(bytes: number, reserve = 0, zero = true, pageOffset?: number): number | null {
    if (pageOffset !== undefined) {
      if (!(Number.isInteger(pageOffset) && pageOffset >= 0 && pageOffset < OS_PAGE))
        throw new RangeError(`arena: pageOffset must be an integer in [0, ${OS_PAGE}), got ${pageOffset}`);
      return this.allocRun([{ offset: 0, bytes }], reserve, pageOffset, OS_PAGE, zero)?.[0] ?? null;
    }
    const size = Math.max(ALIGN, align(bytes));
    if (reserve > 0 && this.reservedTotal + size > this.maxBytes - reserve) return null;
    const start = this.place(size, zero);
    if (start === null) return null;
    if (reserve > 0) {
      this.reserved.add(start);
      this.reservedTotal += size;
    }
    return start;
  }

  /**
   * Blocks for tensors laid out as a file lays them out: piece i at `pieces[i].offset` bytes past the
   * first (offsets increasing, pieces not overlapping), the first `phase` bytes past a multiple of
   * `unit` (an OS page or a larger power of two: a 2 MiB huge page), so that one mapping of the file's
   * pages covers them all (one mapping, not one a tensor: the kernel's page-sampling reclaim stalls a
   * process for each of many mappings of a file). Zero-filled only if `zero`. Each address handed out is
   * released on its own; the bytes between two pieces go with the first. Null when the memory cannot
   * hold them; `reserve` as for alloc.
   */
  allocRun(
    pieces: readonly { offset: number; bytes: number }[],
    reserve: number,
    phase: number,
    unit = OS_PAGE,
    zero = false,
  ): number[] | null {
    if (!(Number.isInteger(unit) && unit >= OS_PAGE && (unit & (unit - 1)) === 0 && unit <= 1 << 30))
      throw new RangeError(`arena: unit must be a power of two from ${OS_PAGE} to 2^30, got ${unit}`);
    if (!(Number.isInteger(phase) && phase >= 0 && phase < unit))
      throw new RangeError(`arena: phase must be an integer in [0, ${unit}), got ${phase}`);
    if (pieces.length === 0 || pieces[0]!.offset !== 0)
      throw new RangeError('arena: a run needs pieces, the first at offset 0');
    for (let i = 1; i < pieces.length; i++)
      if (!(pieces[i]!.offset >= pieces[i - 1]!.offset + pieces[i - 1]!.bytes))
        throw new RangeError(`arena: run piece ${i} at ${pieces[i]!.offset} overlaps the one before it`);
    const last = pieces[pieces.length - 1]!;
    const size = Math.max(ALIGN, align(last.offset + last.bytes + unit));
    if (reserve > 0 && this.reservedTotal + size > this.maxBytes - reserve) return null;
    const start = this.place(size, zero);
    if (start === null) return null;
    const base = start + ((phase - (start % unit) + unit) % unit);
    const at = pieces.map((p) => base + p.offset);
    // One block a piece, tiling the placed one: the first from its start (the page shift), the last to its end.
    this.used.delete(start);
    for (let i = 0; i < at.length; i++) {
      const from = i === 0 ? start : at[i]!;
      this.used.set(from, (i + 1 < at.length ? at[i + 1]! : start + size) - from);
      if (reserve > 0) this.reserved.add(from);
    }
    if (reserve > 0) this.reservedTotal += size;
    if (at[0] !== start) this.shifted.set(at[0]!, start);
    return at;
  }

  private place(size: number, zero: boolean): number | null {
    for (let i = 0; i < this.free.length; i++) {
      const f = this.free[i]!;
      // A run's pieces end anywhere: blocks start aligned, the bytes before stay free.
      const at = align(f.at);
      const pad = at - f.at;
      if (f.bytes < size + pad) continue;
      const rest = f.bytes - pad - size;
      if (pad > 0) {
        f.bytes = pad;
        if (rest > 0) this.free.splice(i + 1, 0, { at: at + size, bytes: rest });
      } else if (rest === 0) this.free.splice(i, 1);
      else {
        f.at += size;
        f.bytes -= size;
      }
      if (zero) new Uint8Array(this.buffer(), at, size).fill(0);
      this.used.set(at, size);
      this.usedTotal += size;
      return at;
    }
    const at = align(this.top);
    if (at + size > this.maxBytes) return null;
    const have = this.memory.buffer.byteLength;
    if (at + size > have) {
      if (!this.grow(Math.ceil((Math.ceil((at + size) / GROW_STEP) * GROW_STEP - have) / PAGE))) {
        // the step runs past the memory's maximum: just what this block needs
        if (!this.grow(Math.ceil((at + size - have) / PAGE))) return null;
      }
    }
    if (at > this.top) this.addFree(this.top, at - this.top);
    this.top = at + size;
    // Pages past the high-water mark are fresh (zero); below it they held blocks released since.
    if (zero && at < this.highWater) new Uint8Array(this.buffer(), at, Math.min(size, this.highWater - at)).fill(0);
    this.highWater = Math.max(this.highWater, this.top);
    this.used.set(at, size);
    this.usedTotal += size;
    return at;
  }

  private grow(pages: number): boolean {
    try {
      this.memory.grow(pages);
      return true;
    } catch {
      return false;
    }
  }

  /** Returns a block to the free list (merging with free neighbours). Unknown addresses are an error. */
  release(handedOut: number): void {
    const at = this.shifted.get(handedOut) ?? handedOut;
    this.shifted.delete(handedOut);
    const size = this.used.get(at);
    if (size === undefined) throw new Error(`internal: arena release of unknown block ${at}`);
    this.used.delete(at);
    this.usedTotal -= size;
    if (this.reserved.delete(at)) this.reservedTotal -= size;
    this.addFree(at, size);
  }

  /** Puts [at, at + size) on the free list, merging neighbours; free space ending at the top rejoins the bump region. */
  private addFree(at: number, size: number): void {
    let i = 0;
    while (i < this.free.length && this.free[i]!.at < at) i++;
    this.free.splice(i, 0, { at, bytes: size });
    const next = this.free[i + 1];
    if (next && at + size === next.at) {
      this.free[i]!.bytes += next.bytes;
      this.free.splice(i + 1, 1);
    }
    const prev = this.free[i - 1];
    if (prev && prev.at + prev.bytes === at) {
      prev.bytes += this.free[i]!.bytes;
      this.free.splice(i, 1);
      i--;
    }
    // A free block at the top goes back to the bump region.
    const last = this.free[this.free.length - 1];
    if (last && last.at + last.bytes === this.top) {
      this.top = last.at;
      this.free.pop();
    }
  }

  /** A typed view of `size` elements of `dtype` at `at`. */
  view(dtype: DType, at: number, size: number): StorageArray {
    const buf = this.buffer();
    switch (dtype) {
      case 'f32':
        return new Float32Array(buf, at, size);
      case 'bf16':
      case 'f16':
        return new Uint16Array(buf, at, size);
      case 'i32':
        return new Int32Array(buf, at, size);
      case 'u32':
        return new Uint32Array(buf, at, size);
      case 'u8':
      case 'bool':
      case 'fp8-e4m3':
      case 'fp8-e5m2':
        return new Uint8Array(buf, at, size);
      default:
        throw new TypeError(`resident storage does not hold ${dtype}`);
    }
  }
}

export function align(x: number, a = ALIGN): number {
  return Math.ceil(x / a) * a;
}

/** A job's scratch regions laid out from 0: `take(bytes)` returns the next aligned offset; `bytes` is the total. */
export class ScratchLayout {
  bytes = 0;
  readonly take = (n: number): number => {
    const at = this.bytes;
    this.bytes += align(n);
    return at;
  };
}
