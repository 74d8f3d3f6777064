// The paged latent KV cache: MLA caches only the normalized latent c_KV [d_c] and the rotated shared
// key k_R [d_R] per token and layer. Tokens live in fixed-size blocks drawn from one pool; each
// sequence owns a block table. Blocks are reference counted, so fork() shares a prefix and a write
// into a shared block copies it first (copy-on-write).
// One file (past ~500 lines) on purpose: allocation, forks, prefix sharing, appends and truncation all
// keep the same reference-count and block-table invariants, which a reader checks in one place.
import {
  bytesPerElement,
  cpu,
  CpuStorage,
  isWebGpu,
  Tensor,
  tensor,
  type Backend,
  type DType,
  type Storage,
} from '@dsv3/core';

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
}

export class CacheError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CacheError';
  }
}

interface Mirror {
  kv: Tensor;
  kr: Tensor;
  /** block generations the device copy holds */
  seen: Uint32Array;
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
  private readonly kv: Pool[];
  private readonly kr: Pool[];
  private readonly refs: Int32Array;
  private readonly freeList: number[];
  private readonly seqs = new Map<number, SeqState>();
  private nextId = 0;
  /** per layer and block, bumped on every write (device mirrors re-upload what changed) */
  private readonly gen: Uint32Array;
  private readonly mirrors = new Map<Backend, (Mirror | null)[]>();

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
    const make = (n: number): Pool => (dtype === 'f64' ? new Float64Array(n) : new Float32Array(n));
    this.kv = Array.from({ length: this.numLayers }, () => make(this.numBlocks * bs * this.kvLoraRank));
    this.kr = Array.from({ length: this.numLayers }, () => make(this.numBlocks * bs * this.ropeDim));
    this.refs = new Int32Array(this.numBlocks);
    this.gen = new Uint32Array(this.numLayers * this.numBlocks);
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
    for (const b of s.blocks) this.release(b);
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
   * Appends `n` tokens of `layer` to `seq`: ckv [n, d_c] and kr [n, d_R] (row-major, any numeric
   * array or a CPU tensor). Allocates blocks as needed and copies shared blocks it writes into.
   * Atomic: if the pool runs out, nothing changes. Returns the position of the first new token.
   */
  append(layer: number, seq: number, ckv: ArrayLike<number> | Tensor, kr: ArrayLike<number> | Tensor): number {
    this.checkLayer(layer);
    const s = this.state(seq);
    const a = ckv instanceof Tensor ? hostData(ckv, 'ckv') : ckv;
    const b = kr instanceof Tensor ? hostData(kr, 'kr') : kr;
    const C = this.kvLoraRank;
    const R = this.ropeDim;
    if (ckv instanceof Tensor && ckv.shape[ckv.ndim - 1] !== C)
      throw new CacheError(
        `PagedLatentCache: ckv rows must be ${C} wide (kvLoraRank), got shape [${ckv.shape.join(', ')}]`,
      );
    if (kr instanceof Tensor && kr.shape[kr.ndim - 1] !== R)
      throw new CacheError(`PagedLatentCache: kr rows must be ${R} wide (ropeDim), got shape [${kr.shape.join(', ')}]`);
    if (a.length % C !== 0)
      throw new CacheError(
        `PagedLatentCache: ckv holds ${a.length} values, not a whole number of ${C}-wide rows (kvLoraRank)`,
      );
    if (b.length % R !== 0)
      throw new CacheError(
        `PagedLatentCache: kr holds ${b.length} values, not a whole number of ${R}-wide rows (ropeDim)`,
      );
    const n = a.length / C;
    if (b.length / R !== n) throw new CacheError(`PagedLatentCache: ckv has ${n} rows but kr has ${b.length / R}`);
    const start = s.filled[layer]!;
    if (n === 0) return start;
    const end = start + n;
    const bs = this.blockSize;
    const firstBlock = Math.floor(start / bs);
    const lastBlock = Math.floor((end - 1) / bs);
    // Count what this write needs before touching anything.
    let need = Math.max(0, lastBlock + 1 - s.blocks.length);
    for (let k = firstBlock; k < Math.min(lastBlock + 1, s.blocks.length); k++)
      if (this.refs[s.blocks[k]!]! > 1) need++;
    if (need > this.freeList.length) {
      throw new CacheError(
        `PagedLatentCache: out of blocks: appending ${n} tokens to sequence ${seq} needs ${need} free blocks, ${this.freeList.length} left (pool of ${this.numBlocks} x ${bs} tokens)`,
      );
    }
    for (let k = firstBlock; k < Math.min(lastBlock + 1, s.blocks.length); k++) {
      const old = s.blocks[k]!;
      if (this.refs[old]! > 1) {
        const fresh = this.take();
        this.copyBlock(old, fresh);
        this.refs[old]!--;
        s.blocks[k] = fresh;
      }
    }
    while (s.blocks.length <= lastBlock) s.blocks.push(this.take());
    const kvPool = this.kv[layer]!;
    const krPool = this.kr[layer]!;
    for (let t = 0; t < n; t++) {
      const pos = start + t;
      const row = s.blocks[Math.floor(pos / bs)]! * bs + (pos % bs);
      copyRow(a, t * C, kvPool, row * C, C);
      copyRow(b, t * R, krPool, row * R, R);
    }
    for (let k = firstBlock; k <= lastBlock; k++) this.gen[layer * this.numBlocks + s.blocks[k]!]!++;
    s.filled[layer] = end;
    return start;
  }

  private copyBlock(from: number, to: number): void {
    const bs = this.blockSize;
    for (let l = 0; l < this.numLayers; l++) {
      const kv = this.kv[l]!;
      const kr = this.kr[l]!;
      kv.copyWithin(to * bs * this.kvLoraRank, from * bs * this.kvLoraRank, (from + 1) * bs * this.kvLoraRank);
      kr.copyWithin(to * bs * this.ropeDim, from * bs * this.ropeDim, (from + 1) * bs * this.ropeDim);
      this.gen[l * this.numBlocks + to]!++;
    }
  }

  /** The latents of positions [start, end) of `seq` in `layer`, gathered into contiguous rows. */
  read(layer: number, seq: number, start = 0, end?: number): LatentRows {
    this.checkLayer(layer);
    const s = this.state(seq);
    const len = s.filled[layer]!;
    const e = end ?? len;
    if (!Number.isInteger(start) || !Number.isInteger(e) || start < 0 || e > len || start > e)
      throw new CacheError(
        `PagedLatentCache: read [${start}, ${e}) is outside sequence ${seq}'s ${len} tokens in layer ${layer}`,
      );
    const C = this.kvLoraRank;
    const R = this.ropeDim;
    const n = e - start;
    const mk = (k: number): Pool => (this.dtype === 'f64' ? new Float64Array(k) : new Float32Array(k));
    const ckv = mk(n * C);
    const kr = mk(n * R);
    const kvPool = this.kv[layer]!;
    const krPool = this.kr[layer]!;
    const bs = this.blockSize;
    let t = 0;
    while (t < n) {
      const pos = start + t;
      const inBlock = pos % bs;
      const run = Math.min(bs - inBlock, n - t);
      const row = s.blocks[Math.floor(pos / bs)]! * bs + inBlock;
      ckv.set(kvPool.subarray(row * C, (row + run) * C), t * C);
      kr.set(krPool.subarray(row * R, (row + run) * R), t * R);
      t += run;
    }
    return { ckv, kr, length: n };
  }

  /**
   * The pool of one layer as CPU tensors [numBlocks, blockSize, d_c] and [numBlocks, blockSize, d_R]
   * sharing the cache's memory (no copy). Kernels read them; do not hold on to them across writes.
   */
  poolTensors(layer: number): { ckv: Tensor; kr: Tensor } {
    this.checkLayer(layer);
    const dt: DType = this.dtype;
    return {
      ckv: new Tensor(cpu, new CpuStorage(this.kv[layer]!), [this.numBlocks, this.blockSize, this.kvLoraRank], dt),
      kr: new Tensor(cpu, new CpuStorage(this.kr[layer]!), [this.numBlocks, this.blockSize, this.ropeDim], dt),
    };
  }

  /**
   * The pool of one layer on `backend` ([numBlocks, blockSize, d_c] and [numBlocks, blockSize, d_R]):
   * the CPU shares the host arrays; another backend gets a device copy kept in sync by uploading the
   * blocks written since the last call (WebGPU: one queue.writeBuffer per run of changed blocks,
   * elsewhere a fresh upload when anything changed).
   */
  devicePool(layer: number, backend: Backend): { ckv: Tensor; kr: Tensor } {
    if (backend.name === 'cpu') return this.poolTensors(layer);
    this.checkLayer(layer);
    let list = this.mirrors.get(backend);
    if (!list) this.mirrors.set(backend, (list = new Array<Mirror | null>(this.numLayers).fill(null)));
    const gens = this.gen.subarray(layer * this.numBlocks, (layer + 1) * this.numBlocks);
    const kvPool = this.kv[layer]!;
    const krPool = this.kr[layer]!;
    const bs = this.blockSize;
    const C = this.kvLoraRank;
    const R = this.ropeDim;
    let m = list[layer] ?? null;
    const fresh = (): Mirror => ({
      kv: tensor(kvPool, { shape: [this.numBlocks, bs, C], dtype: this.dtype, backend }),
      kr: tensor(krPool, { shape: [this.numBlocks, bs, R], dtype: this.dtype, backend }),
      seen: Uint32Array.from(gens),
    });
    if (!m) {
      m = list[layer] = fresh();
      return { ckv: m.kv, kr: m.kr };
    }
    const writer = partialWriter(backend);
    const runs: [number, number][] = [];
    for (let k = 0; k < this.numBlocks; k++) {
      if (m.seen[k] === gens[k]) continue;
      const last = runs[runs.length - 1];
      if (last && last[1] === k) last[1] = k + 1;
      else runs.push([k, k + 1]);
    }
    if (!runs.length) return { ckv: m.kv, kr: m.kr };
    if (!writer) {
      m.kv.dispose();
      m.kr.dispose();
      m = list[layer] = fresh();
      return { ckv: m.kv, kr: m.kr };
    }
    const el = this.dtype === 'f64' ? 8 : 4;
    for (const [k0, k1] of runs) {
      writer(m.kv.storage, k0 * bs * C * el, kvPool.subarray(k0 * bs * C, k1 * bs * C));
      writer(m.kr.storage, k0 * bs * R * el, krPool.subarray(k0 * bs * R, k1 * bs * R));
    }
    m.seen.set(gens);
    return { ckv: m.kv, kr: m.kr };
  }

  /** Frees the device copies of the pool (all backends, or one). */
  releaseDevice(backend?: Backend): void {
    for (const [be, list] of this.mirrors) {
      if (backend && be !== backend) continue;
      for (const m of list) {
        m?.kv.dispose();
        m?.kr.dispose();
      }
      this.mirrors.delete(be);
    }
  }

  /**
   * Block tables and lengths of `seqs` for `layer`, padded to the longest table:
   * tables [seqs.length, maxBlocks] (i32, padding -1) and lengths [seqs.length].
   */
  batchTables(layer: number, seqs: readonly number[]): { tables: Int32Array; lengths: Int32Array; maxBlocks: number } {
    this.checkLayer(layer);
    const states = seqs.map((q) => this.state(q));
    const maxBlocks = Math.max(1, ...states.map((s) => Math.ceil(s.filled[layer]! / this.blockSize)));
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

type Writer = (storage: Storage, byteOffset: number, data: Float32Array | Float64Array) => void;

/**
 * In-place writes into device storage where the backend allows them: core's WebGpuBackend does
 * (writeStorage, ordered after every dispatch recorded before it); elsewhere null (re-upload).
 */
function partialWriter(backend: Backend): Writer | null {
  if (!isWebGpu(backend)) return null;
  return (storage, byteOffset, data) => backend.writeStorage(storage, byteOffset, data);
}

function hostData(t: Tensor, what: string): ArrayLike<number> {
  if (!t.backend.readSync)
    throw new CacheError(
      `PagedLatentCache.append: ${what} lives on the ${t.backend.name} backend; read it first (await t.data()) and pass the array`,
    );
  return t.dataSync();
}

function copyRow(src: ArrayLike<number>, so: number, dst: Pool, d0: number, n: number): void {
  if (ArrayBuffer.isView(src) && (src instanceof Float32Array || src instanceof Float64Array)) {
    dst.set(src.subarray(so, so + n), d0);
    return;
  }
  for (let i = 0; i < n; i++) dst[d0 + i] = src[so + i]!;
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
