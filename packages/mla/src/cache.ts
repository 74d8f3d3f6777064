// The paged latent KV cache: MLA caches only the normalized latent c_KV [d_c] and the rotated shared
// key k_R [d_R] per token and layer. Tokens live in fixed-size blocks drawn from one pool; each
// sequence owns a block table. Blocks are reference counted, so fork() shares a prefix and a write
// into a shared block copies it first (copy-on-write).
// The pages live on the backend the cache was made for (on the CPU, f32 pages in the GEMM engine's
// memory while it has room, else host arrays; GPU buffers on WebGPU); the host keeps only the
// bookkeeping (block tables, lengths, reference counts). Appending scatters a step's latents into the
// pages on the device at rows the host computes from the block tables, so nothing is read back;
// readAsync() exports a sequence's rows.
// One file (past ~500 lines) on purpose: allocation, forks, prefix sharing, appends and truncation all
// keep the same reference-count and block-table invariants, which a reader checks in one place.
import {
  bytesPerElement,
  cpu,
  CpuStorage,
  exec,
  indexSelect,
  reshape,
  Tensor,
  tensor,
  type Backend,
  type DType,
} from '@dsv3/core';
import { COPY_ROWS_OP, WRITE_ROWS_OP } from './cache-rows.js';
import './register.js';

export type CacheDType = 'f32' | 'f64';
type Pool = Float32Array | Float64Array;

export interface PagedLatentCacheOptions {
  numLayers: number;
  /** d_c, width of the cached latent c_KV */
  kvLoraRank: number;
  /** d_R, width of the shared rotary key */
  ropeDim: number;
  /** blocks in the pool (all sequences together) */
  numBlocks: number;
  /** tokens per block (default 16) */
  blockSize?: number;
  /** element type of the pool (default f32) */
  dtype?: CacheDType;
  /** where the pages live (default the CPU); attention must run on the same backend */
  backend?: Backend;
}

export class CacheError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CacheError';
  }
}

interface SeqState {
  blocks: number[];
  /** tokens written per layer */
  filled: number[];
}

export interface LatentRows {
  /** [length, kvLoraRank] row-major */
  ckv: Pool;
  /** [length, ropeDim] row-major */
  kr: Pool;
  length: number;
}

/** New latent rows: a numeric array (row-major) or a tensor whose last axis is the row width. */
export type LatentInput = ArrayLike<number> | Tensor;

function checkInt(name: string, v: number, min: number): void {
  if (!Number.isInteger(v) || v < min)
    throw new CacheError(`PagedLatentCache: ${name} must be an integer >= ${min}, got ${v}`);
}

export class PagedLatentCache {
  readonly numLayers: number;
  readonly kvLoraRank: number;
  readonly ropeDim: number;
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly dtype: CacheDType;
  /** the backend the pages live on */
  readonly backend: Backend;
  /** per layer: the pages [numBlocks, blockSize, d_c] and [numBlocks, blockSize, d_R] */
  private readonly kv: Tensor[];
  private readonly kr: Tensor[];
  private readonly refs: Int32Array;
  private readonly freeList: number[];
  private readonly seqs = new Map<number, SeqState>();
  private nextId = 0;

  constructor(opts: PagedLatentCacheOptions) {
    checkInt('numLayers', opts.numLayers, 1);
    checkInt('kvLoraRank', opts.kvLoraRank, 1);
    checkInt('ropeDim', opts.ropeDim, 1);
    checkInt('numBlocks', opts.numBlocks, 1);
    const bs = opts.blockSize ?? 16;
    checkInt('blockSize', bs, 1);
    const dtype = opts.dtype ?? 'f32';
    if (dtype !== 'f32' && dtype !== 'f64')
      throw new CacheError(`PagedLatentCache: dtype must be 'f32' or 'f64', got ${String(dtype)}`);
    this.numLayers = opts.numLayers;
    this.kvLoraRank = opts.kvLoraRank;
    this.ropeDim = opts.ropeDim;
    this.numBlocks = opts.numBlocks;
    this.blockSize = bs;
    this.dtype = dtype;
    const backend = opts.backend ?? cpu;
    if (!backend.supportsDType(dtype))
      throw new CacheError(`PagedLatentCache: the ${backend.name} backend cannot hold a ${dtype} pool (use f32)`);
    this.backend = backend;
    // f32 pages on the CPU live in the GEMM engine's memory while it has room: the attention job reads a
    // sequence's consecutive rows there in place instead of copying them every step (core's latentAttention)
    const storage = (n: number) =>
      backend === cpu && dtype === 'f32' ? cpu.allocResident(dtype, n) : backend.alloc(dtype, n);
    const page = (w: number): Tensor =>
      new Tensor(backend, storage(this.numBlocks * bs * w), [this.numBlocks, bs, w], dtype);
    this.kv = Array.from({ length: this.numLayers }, () => page(this.kvLoraRank));
    this.kr = Array.from({ length: this.numLayers }, () => page(this.ropeDim));
    this.refs = new Int32Array(this.numBlocks);
    // Pop from the end: block 0 is handed out first.
    this.freeList = Array.from({ length: this.numBlocks }, (_, i) => this.numBlocks - 1 - i);
  }

  // ---- accounting ----

  /** Cached elements per token over all layers: (d_c + d_R)·layers. */
  get elementsPerToken(): number {
    return (this.kvLoraRank + this.ropeDim) * this.numLayers;
  }
  /** Bytes per token over all layers if stored as `dtype` (default: this pool's dtype). */
  bytesPerToken(dtype: DType = this.dtype): number {
    return this.elementsPerToken * bytesPerElement(dtype);
  }
  /** Bytes the pool holds (all blocks, all layers). */
  get capacityBytes(): number {
    return this.numBlocks * this.blockSize * this.bytesPerToken();
  }
  get freeBlocks(): number {
    return this.freeList.length;
  }
  get usedBlocks(): number {
    return this.numBlocks - this.freeList.length;
  }
  /** Reference count of a block (for tests and debugging). */
  blockRefCount(block: number): number {
    return this.refs[block] ?? 0;
  }

  // ---- sequences ----

  /** Starts an empty sequence; returns its id. */
  allocate(): number {
    const id = this.nextId++;
    this.seqs.set(id, { blocks: [], filled: new Array<number>(this.numLayers).fill(0) });
    return id;
  }
  /** Alias of allocate(). */
  allocateSequence(): number {
    return this.allocate();
  }
  has(seq: number): boolean {
    return this.seqs.has(seq);
  }
  sequences(): number[] {
    return [...this.seqs.keys()];
  }

  private state(seq: number): SeqState {
    const s = this.seqs.get(seq);
    if (!s) {
      const live = [...this.seqs.keys()];
      throw new CacheError(
        `PagedLatentCache: unknown sequence ${seq} (live sequences: ${live.length ? live.join(', ') : 'none'})`,
      );
    }
    return s;
  }

  private checkLayer(layer: number): void {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.numLayers)
      throw new CacheError(`PagedLatentCache: layer ${layer} is out of range (the cache has ${this.numLayers} layers)`);
  }

  /** Tokens cached for `seq` in `layer` (default: the most any layer holds). */
  length(seq: number, layer?: number): number {
    const s = this.state(seq);
    if (layer === undefined) return Math.max(...s.filled);
    this.checkLayer(layer);
    return s.filled[layer]!;
  }

  /** The block ids of a sequence, in order. */
  blockTable(seq: number): readonly number[] {
    return [...this.state(seq).blocks];
  }

  /** A new sequence sharing all of `seq`'s blocks (a shared prefix); writes copy shared blocks first. */
  fork(seq: number): number {
    const s = this.state(seq);
    const id = this.nextId++;
    for (const b of s.blocks) this.refs[b]!++;
    this.seqs.set(id, { blocks: [...s.blocks], filled: [...s.filled] });
    return id;
  }

  /**
   * A new sequence whose first blocks are `blocks` (shared, e.g. a cached prefix; each gains a
   * reference) holding `lengths[l]` tokens in layer l (layers past `lengths` hold none).
   */
  allocateWithBlocks(blocks: readonly number[], lengths: readonly number[]): number {
    if (lengths.length > this.numLayers)
      throw new CacheError(
        `PagedLatentCache: ${lengths.length} layer lengths given, the cache has ${this.numLayers} layers`,
      );
    for (const n of lengths) {
      if (!Number.isInteger(n) || n < 0 || n > blocks.length * this.blockSize)
        throw new CacheError(
          `PagedLatentCache: a length of ${n} tokens does not fit ${blocks.length} blocks of ${this.blockSize}`,
        );
    }
    for (const b of blocks)
      if (!(this.refs[b]! > 0))
        throw new CacheError(`PagedLatentCache: block ${b} is not in use, so it holds nothing to share`);
    for (const b of blocks) this.refs[b]!++;
    const filled = new Array<number>(this.numLayers).fill(0);
    lengths.forEach((n, l) => (filled[l] = n));
    const id = this.nextId++;
    this.seqs.set(id, { blocks: [...blocks], filled });
    return id;
  }

  /** Holds one more reference on a block in use (a prefix cache keeps blocks alive this way). */
  retainBlock(block: number): void {
    if (!(this.refs[block]! > 0))
      throw new CacheError(`PagedLatentCache: cannot retain block ${block}: it is not in use`);
    this.refs[block]!++;
  }

  /** Drops a reference taken with retainBlock (the block returns to the pool at zero). */
  releaseBlock(block: number): void {
    if (!(this.refs[block]! > 0))
      throw new CacheError(`PagedLatentCache: cannot release block ${block}: it is not in use`);
    this.release(block);
  }

  /** Drops a sequence and releases its blocks. */
  free(seq: number): void {
    const s = this.state(seq);
    // last block first: the free list then hands them out again in ascending order, so a later
    // sequence's rows form one run the attention reads in place (core's latentAttention)
    for (let i = s.blocks.length - 1; i >= 0; i--) this.release(s.blocks[i]!);
    this.seqs.delete(seq);
  }

  /** Rolls a sequence back to `length` tokens in every layer (speculative decoding), releasing blocks past it. */
  truncate(seq: number, length: number): void {
    const s = this.state(seq);
    const cur = Math.max(...s.filled);
    if (!Number.isInteger(length) || length < 0 || length > cur)
      throw new CacheError(`PagedLatentCache: cannot truncate sequence ${seq} to ${length} tokens (it holds ${cur})`);
    for (let l = 0; l < this.numLayers; l++) s.filled[l] = Math.min(s.filled[l]!, length);
    const keep = Math.ceil(length / this.blockSize);
    while (s.blocks.length > keep) this.release(s.blocks.pop()!);
  }

  /** Rolls back one layer of a sequence to `length` tokens (blocks go once no layer needs them). */
  truncateLayer(seq: number, layer: number, length: number): void {
    this.checkLayer(layer);
    const s = this.state(seq);
    const cur = s.filled[layer]!;
    if (!Number.isInteger(length) || length < 0 || length > cur)
      throw new CacheError(
        `PagedLatentCache: cannot truncate layer ${layer} of sequence ${seq} to ${length} tokens (it holds ${cur})`,
      );
    s.filled[layer] = length;
    const keep = Math.ceil(Math.max(...s.filled) / this.blockSize);
    while (s.blocks.length > keep) this.release(s.blocks.pop()!);
  }

  private release(b: number): void {
    const r = --this.refs[b]!;
    if (r === 0) this.freeList.push(b);
  }

  private take(): number {
    const b = this.freeList.pop();
    if (b === undefined) throw new CacheError('internal: free list empty');
    this.refs[b] = 1;
    return b;
  }

  /**
   * Appends `n` tokens of `layer` to `seq`: ckv [n, d_c] and kr [n, d_R] (row-major arrays, or tensors
   * on the cache's backend or the CPU). Allocates blocks as needed and copies shared blocks it writes
   * into. Atomic: if the pool runs out, nothing changes. Returns the position of the first new token.
   */
  append(layer: number, seq: number, ckv: LatentInput, kr: LatentInput): number {
    this.checkLayer(layer);
    const start = this.state(seq).filled[layer]!;
    const a = this.rowsOf(ckv, this.kvLoraRank, 'ckv', 'kvLoraRank');
    const b = this.rowsOf(kr, this.ropeDim, 'kr', 'ropeDim');
    if (a.shape[0] !== b.shape[0])
      throw new CacheError(`PagedLatentCache: ckv has ${a.shape[0]} rows but kr has ${b.shape[0]}`);
    if (a.shape[0] === 0) return start;
    return this.appendRows(layer, [seq], a, b)[0]!;
  }

  /**
   * Appends S new tokens to each of `seqs` in `layer` at once: ckv [B, S, d_c] and kr [B, S, d_R] on the
   * cache's backend, row b extending seqs[b]. One device scatter per pool, no read-back; atomic like
   * append(). Returns each sequence's first new position.
   */
  appendBatch(layer: number, seqs: readonly number[], ckv: Tensor, kr: Tensor): number[] {
    this.checkLayer(layer);
    const B = seqs.length;
    const C = this.kvLoraRank;
    const R = this.ropeDim;
    if (ckv.ndim !== 3 || ckv.shape[0] !== B || ckv.shape[2] !== C)
      throw new CacheError(`PagedLatentCache.appendBatch: ckv must be [${B}, S, ${C}], got [${ckv.shape.join(', ')}]`);
    const S = ckv.shape[1]!;
    if (kr.ndim !== 3 || kr.shape[0] !== B || kr.shape[1] !== S || kr.shape[2] !== R)
      throw new CacheError(`PagedLatentCache.appendBatch: kr must be [${B}, ${S}, ${R}], got [${kr.shape.join(', ')}]`);
    for (const t of [ckv, kr])
      if (t.backend !== this.backend)
        throw new CacheError(
          `PagedLatentCache.appendBatch: latents on ${t.backend.name}, the pages on ${this.backend.name}; make the cache on the model's backend`,
        );
    return this.appendRows(layer, seqs, reshape(ckv, [B * S, C]), reshape(kr, [B * S, R]));
  }

  /** Latent rows as a [n, width] tensor on the cache's backend. */
  private rowsOf(x: LatentInput, width: number, what: string, dim: string): Tensor {
    if (x instanceof Tensor) {
      if (x.shape[x.ndim - 1] !== width)
        throw new CacheError(
          `PagedLatentCache: ${what} rows must be ${width} wide (${dim}), got shape [${x.shape.join(', ')}]`,
        );
      const rows = reshape(x, [x.size / width, width]);
      if (x.backend === this.backend) return rows;
      if (!x.backend.readSync)
        throw new CacheError(
          `PagedLatentCache.append: ${what} lives on the ${x.backend.name} backend, the pages on ${this.backend.name}`,
        );
      return tensor(rows.dataSync(), { shape: rows.shape, dtype: this.dtype, backend: this.backend });
    }
    if (x.length % width !== 0)
      throw new CacheError(
        `PagedLatentCache: ${what} holds ${x.length} values, not a whole number of ${width}-wide rows (${dim})`,
      );
    const data = this.dtype === 'f64' ? Float64Array.from(x) : Float32Array.from(x);
    return tensor(data, { shape: [x.length / width, width], dtype: this.dtype, backend: this.backend });
  }

  /** Appends rows ckv [B·n, C], kr [B·n, R]: n consecutive rows per sequence of `seqs`. */
  private appendRows(layer: number, seqs: readonly number[], ckv: Tensor, kr: Tensor): number[] {
    // loops, not map(): an array map() makes has another map (elements kind) once this is optimized,
    // which deoptimized it in a request's decode (docs/benchmarks.md, issue 13, eighteenth session)
    const states: SeqState[] = [];
    const starts: number[] = [];
    for (const q of seqs) {
      const s = this.state(q);
      states.push(s);
      starts.push(s.filled[layer]!);
    }
    if (seqs.length > 1 && new Set(seqs).size !== seqs.length)
      throw new CacheError('PagedLatentCache: sequence ids must be distinct');
    const n = ckv.shape[0]! / seqs.length;
    if (n === 0) return starts;
    const bs = this.blockSize;
    const span = (st: number): [number, number] => [Math.floor(st / bs), Math.floor((st + n - 1) / bs)];
    // Count what this write needs before touching anything (forks may share blocks: replay the counts).
    const refs = new Map<number, number>();
    const refOf = (b: number): number => refs.get(b) ?? this.refs[b]!;
    let need = 0;
    states.forEach((s, i) => {
      const [first, last] = span(starts[i]!);
      need += Math.max(0, last + 1 - s.blocks.length);
      for (let k = first; k < Math.min(last + 1, s.blocks.length); k++) {
        const b = s.blocks[k]!;
        if (refOf(b) > 1) {
          need++;
          refs.set(b, refOf(b) - 1);
        }
      }
    });
    if (need > this.freeList.length) {
      const what = seqs.length === 1 ? `sequence ${seqs[0]}` : `${seqs.length} sequences`;
      throw new CacheError(
        `PagedLatentCache: out of blocks: appending ${n} tokens to ${what} needs ${need} free blocks, ${this.freeList.length} left (pool of ${this.numBlocks} x ${bs} tokens)`,
      );
    }
    const copyFrom: number[] = [];
    const copyTo: number[] = [];
    const rows = new Int32Array(seqs.length * n);
    states.forEach((s, i) => {
      const [first, last] = span(starts[i]!);
      for (let k = first; k < Math.min(last + 1, s.blocks.length); k++) {
        const old = s.blocks[k]!;
        if (this.refs[old]! > 1) {
          const fresh = this.take();
          copyFrom.push(old);
          copyTo.push(fresh);
          this.refs[old]!--;
          s.blocks[k] = fresh;
        }
      }
      while (s.blocks.length <= last) s.blocks.push(this.take());
      for (let t = 0; t < n; t++) {
        const pos = starts[i]! + t;
        rows[i * n + t] = s.blocks[Math.floor(pos / bs)]! * bs + (pos % bs);
      }
      s.filled[layer] = starts[i]! + n;
    });
    if (copyFrom.length) this.copyBlocks(copyFrom, copyTo);
    const idx = this.indexTensor(rows);
    exec(WRITE_ROWS_OP, [this.kv[layer]!, ckv, idx], {});
    exec(WRITE_ROWS_OP, [this.kr[layer]!, kr, idx], {});
    idx.dispose();
    return starts;
  }

  private indexTensor(rows: Int32Array): Tensor {
    return tensor(rows, { shape: [rows.length], dtype: 'i32', backend: this.backend });
  }

  /** Copies whole blocks (every layer) on the device: the copy-on-write of shared blocks. */
  private copyBlocks(from: readonly number[], to: readonly number[]): void {
    const bs = this.blockSize;
    const expand = (blocks: readonly number[]): Tensor =>
      this.indexTensor(Int32Array.from(blocks.flatMap((b) => Array.from({ length: bs }, (_, r) => b * bs + r))));
    const f = expand(from);
    const t = expand(to);
    for (let l = 0; l < this.numLayers; l++) {
      exec(COPY_ROWS_OP, [this.kv[l]!, f, t], {});
      exec(COPY_ROWS_OP, [this.kr[l]!, f, t], {});
    }
    f.dispose();
    t.dispose();
  }

  /** Pool rows of positions [start, end) of `seq` in `layer` (checked). */
  private rowIndices(layer: number, seq: number, start: number, end: number | undefined): Int32Array {
    this.checkLayer(layer);
    const s = this.state(seq);
    const len = s.filled[layer]!;
    const e = end ?? len;
    if (!Number.isInteger(start) || !Number.isInteger(e) || start < 0 || e > len || start > e)
      throw new CacheError(
        `PagedLatentCache: read [${start}, ${e}) is outside sequence ${seq}'s ${len} tokens in layer ${layer}`,
      );
    const bs = this.blockSize;
    const rows = new Int32Array(e - start);
    for (let t = 0; t < rows.length; t++) {
      const pos = start + t;
      rows[t] = s.blocks[Math.floor(pos / bs)]! * bs + (pos % bs);
    }
    return rows;
  }

  /**
   * The latents of positions [start, end) of `seq` in `layer`, gathered into contiguous rows; only
   * where the pages can be read synchronously (the CPU). readAsync() works on every backend.
   */
  read(layer: number, seq: number, start = 0, end?: number): LatentRows {
    const rows = this.rowIndices(layer, seq, start, end);
    const kvPool = hostPages(this.kv[layer]!);
    const krPool = hostPages(this.kr[layer]!);
    const C = this.kvLoraRank;
    const R = this.ropeDim;
    const mk = (k: number): Pool => (this.dtype === 'f64' ? new Float64Array(k) : new Float32Array(k));
    const ckv = mk(rows.length * C);
    const kr = mk(rows.length * R);
    rows.forEach((row, t) => {
      ckv.set(kvPool.subarray(row * C, (row + 1) * C), t * C);
      kr.set(krPool.subarray(row * R, (row + 1) * R), t * R);
    });
    return { ckv, kr, length: rows.length };
  }

  /**
   * read() on any backend: exports the rows of positions [start, end) (e.g. to stream a sequence's pages
   * to another worker). The rows are gathered on the device when called; later writes do not change them.
   */
  async readAsync(layer: number, seq: number, start = 0, end?: number): Promise<LatentRows> {
    if (this.backend.readSync) return this.read(layer, seq, start, end);
    const rows = this.rowIndices(layer, seq, start, end);
    if (!rows.length) return this.read(layer, seq, start, end);
    const idx = this.indexTensor(rows);
    const gather = (pool: Tensor): Tensor => {
      const [P, B, W] = pool.shape as [number, number, number];
      return indexSelect(reshape(pool, [P * B, W]), idx, 0);
    };
    const ckvT = gather(this.kv[layer]!);
    const krT = gather(this.kr[layer]!);
    idx.dispose();
    const [ckv, kr] = await Promise.all([ckvT.data(), krT.data()]);
    ckvT.dispose();
    krT.dispose();
    return { ckv: ckv as Pool, kr: kr as Pool, length: rows.length };
  }

  /**
   * The pages of one layer, [numBlocks, blockSize, d_c] and [numBlocks, blockSize, d_R], on the cache's
   * backend (the storage itself, no copy): what the paged attention kernels read in place. Do not hold
   * on to them across writes.
   */
  poolTensors(layer: number): { ckv: Tensor; kr: Tensor } {
    this.checkLayer(layer);
    return { ckv: this.kv[layer]!, kr: this.kr[layer]! };
  }

  /** Frees the pages (the cache is unusable afterwards). */
  dispose(): void {
    for (const t of [...this.kv, ...this.kr]) t.dispose();
    this.seqs.clear();
  }

  /**
   * Block tables and lengths of `seqs` for `layer`, padded to the longest table:
   * tables [seqs.length, maxBlocks] (i32, padding -1) and lengths [seqs.length].
   */
  batchTables(layer: number, seqs: readonly number[]): { tables: Int32Array; lengths: Int32Array; maxBlocks: number } {
    this.checkLayer(layer);
    const states: SeqState[] = []; // (a loop, not map(): see appendRows)
    let maxBlocks = 1;
    for (const q of seqs) {
      const s = this.state(q);
      states.push(s);
      maxBlocks = Math.max(maxBlocks, Math.ceil(s.filled[layer]! / this.blockSize));
    }
    const tables = new Int32Array(seqs.length * maxBlocks).fill(-1);
    const lengths = new Int32Array(seqs.length);
    states.forEach((s, i) => {
      lengths[i] = s.filled[layer]!;
      const nb = Math.ceil(s.filled[layer]! / this.blockSize);
      for (let k = 0; k < nb; k++) tables[i * maxBlocks + k] = s.blocks[k]!;
    });
    return { tables, lengths, maxBlocks };
  }
}

/** The host array behind CPU pages. */
function hostPages(t: Tensor): Pool {
  if (!(t.storage instanceof CpuStorage))
    throw new CacheError(
      `PagedLatentCache.read: the pages live on the ${t.backend.name} backend; use await cache.readAsync(...)`,
    );
  return t.storage.data as Pool;
}

export type KvCacheKind = 'mha' | 'gqa' | 'mqa' | 'mla';

export interface KvElementsSpec {
  kind: KvCacheKind;
  numLayers: number;
  /** n_h (mha, gqa) */
  numHeads?: number;
  /** d_h (mha, gqa, mqa) */
  headDim?: number;
  /** n_g: key/value groups (gqa) */
  numGroups?: number;
  /** d_c (mla) */
  kvLoraRank?: number;
  /** d_R (mla) */
  ropeDim?: number;
}

function need(spec: KvElementsSpec, k: keyof KvElementsSpec): number {
  const v = spec[k];
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0)
    throw new CacheError(`kvElementsPerToken(${spec.kind}): ${k} must be a positive integer, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * KV-cache elements per token (DeepSeek-V2 Table 1): MHA 2·n_h·d_h·l, GQA 2·n_g·d_h·l, MQA 2·d_h·l,
 * MLA (d_c + d_R)·l. Multiply by bytesPerElement(dtype) for bytes.
 */
export function kvElementsPerToken(spec: KvElementsSpec): number {
  const l = need(spec, 'numLayers');
  switch (spec.kind) {
    case 'mha':
      return 2 * need(spec, 'numHeads') * need(spec, 'headDim') * l;
    case 'gqa': {
      const g = need(spec, 'numGroups');
      if (spec.numHeads !== undefined && (need(spec, 'numHeads') % g !== 0 || g > spec.numHeads)) {
        throw new CacheError(`kvElementsPerToken(gqa): ${spec.numHeads} heads do not divide into ${g} groups`);
      }
      return 2 * g * need(spec, 'headDim') * l;
    }
    case 'mqa':
      return 2 * need(spec, 'headDim') * l;
    case 'mla':
      return (need(spec, 'kvLoraRank') + need(spec, 'ropeDim')) * l;
    default:
      throw new CacheError(
        `kvElementsPerToken: unknown kind ${JSON.stringify((spec as { kind: unknown }).kind)} (mha, gqa, mqa or mla)`,
      );
  }
}
