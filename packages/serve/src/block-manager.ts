// The block manager: which latent-cache blocks each running sequence holds, and a prefix cache of full
// blocks shared by content. A full block's key chains its parent's key with its tokens, so equal keys
// mean equal prefixes. The cache keeps one reference on every keyed block; a keyed block nobody else
// holds is "evictable" and is reclaimed least-recently-used first when the pool runs short.
import { createHash } from 'node:crypto';
import type { PagedLatentCache } from '@dsv3/mla';

export interface BlockManagerOptions {
  /** Share full blocks of equal prefixes (default true). */
  prefixCaching?: boolean;
  /** Layers of the cache the main model writes (the rest, MTP modules, are never keyed). */
  mainLayers: number;
}

export interface PrefixHit {
  blocks: number[];
  /** tokens those blocks hold */
  tokens: number;
}

interface SeqBlocks {
  /** keys of the sequence's leading full blocks registered so far */
  keys: string[];
}

function chainKey(parent: string, tokens: readonly number[]): string {
  const h = createHash('sha256');
  h.update(parent);
  h.update(Int32Array.from(tokens));
  return h.digest('base64');
}

export class BlockManager {
  readonly cache: PagedLatentCache;
  readonly prefixCaching: boolean;
  private readonly mainLayers: number;
  /** key → block, in least-recently-used order (a use moves a key to the end) */
  private readonly byKey = new Map<string, number>();
  private readonly keyOf = new Map<number, string>();
  private readonly seqs = new Map<number, SeqBlocks>();
  /** counters for metrics */
  queries = 0;
  hits = 0;

  constructor(cache: PagedLatentCache, opts: BlockManagerOptions) {
    this.cache = cache;
    this.prefixCaching = opts.prefixCaching ?? true;
    this.mainLayers = opts.mainLayers;
  }

  get blockSize(): number {
    return this.cache.blockSize;
  }
  get totalBlocks(): number {
    return this.cache.numBlocks;
  }
  /** Blocks a new allocation can get: free ones plus cached ones nobody holds. */
  get availableBlocks(): number {
    let evictable = 0;
    for (const b of this.keyOf.keys()) if (this.cache.blockRefCount(b) === 1) evictable++;
    return this.cache.freeBlocks + evictable;
  }
  /** Fraction of the pool held by sequences (cached-but-unheld blocks count as free). */
  get usage(): number {
    return 1 - this.availableBlocks / this.totalBlocks;
  }
  get cachedBlocks(): number {
    return this.keyOf.size;
  }

  /** The longest run of cached full blocks that prefixes `tokens`, never covering its last token. */
  lookup(tokens: readonly number[]): PrefixHit {
    if (!this.prefixCaching) return { blocks: [], tokens: 0 };
    const bs = this.blockSize;
    const full = Math.floor((tokens.length - 1) / bs);
    const blocks: number[] = [];
    let key = '';
    for (let k = 0; k < full; k++) {
      key = chainKey(key, tokens.slice(k * bs, (k + 1) * bs));
      const b = this.byKey.get(key);
      if (b === undefined) break;
      blocks.push(b);
    }
    return { blocks, tokens: blocks.length * bs };
  }

  /** Counts one admitted prompt for the hit rate. */
  recordQuery(promptTokens: number, hitTokens: number): void {
    this.queries += promptTokens;
    this.hits += hitTokens;
  }

  /** Starts a cache sequence holding `hit`'s blocks. */
  allocate(hit: PrefixHit): number {
    const seq = this.cache.allocateWithBlocks(hit.blocks, new Array<number>(this.mainLayers).fill(hit.tokens));
    const keys: string[] = [];
    for (const b of hit.blocks) {
      const key = this.keyOf.get(b)!;
      keys.push(key);
      this.touch(key, b);
    }
    this.seqs.set(seq, { keys });
    return seq;
  }

  /** New blocks a sequence needs to hold `length` tokens. */
  blocksNeeded(seq: number | null, length: number): number {
    const have = seq === null ? 0 : this.cache.blockTable(seq).length;
    return Math.max(0, Math.ceil(length / this.blockSize) - have);
  }

  /** Makes `n` blocks free, evicting least-recently-used cached blocks; false if it cannot. */
  reserve(n: number): boolean {
    if (this.cache.freeBlocks >= n) return true;
    if (this.availableBlocks < n) return false;
    for (const [key, b] of this.byKey) {
      if (this.cache.freeBlocks >= n) break;
      if (this.cache.blockRefCount(b) !== 1) continue;
      this.byKey.delete(key);
      this.keyOf.delete(b);
      this.cache.releaseBlock(b);
    }
    return this.cache.freeBlocks >= n;
  }

  /** Keys the full blocks of `seq` whose tokens (`tokens`, the sequence's first tokens) are now cached. */
  commit(seq: number, tokens: readonly number[]): void {
    if (!this.prefixCaching) return;
    const s = this.seqs.get(seq);
    if (!s) return;
    const bs = this.blockSize;
    const table = this.cache.blockTable(seq);
    const full = Math.floor(Math.min(tokens.length, this.cache.length(seq, 0)) / bs);
    for (let k = s.keys.length; k < full; k++) {
      const key = chainKey(s.keys[k - 1] ?? '', tokens.slice(k * bs, (k + 1) * bs));
      s.keys.push(key);
      const b = table[k]!;
      if (this.byKey.has(key) || this.keyOf.has(b)) continue;
      this.byKey.set(key, b);
      this.keyOf.set(b, key);
      this.cache.retainBlock(b);
    }
  }

  /** Releases a sequence's blocks (keyed ones stay cached, most recently used). */
  free(seq: number): void {
    const s = this.seqs.get(seq);
    this.seqs.delete(seq);
    if (!this.cache.has(seq)) return;
    if (s)
      for (const key of s.keys) {
        const b = this.byKey.get(key);
        if (b !== undefined) this.touch(key, b);
      }
    this.cache.free(seq);
  }

  /** Starts an empty sequence without consulting the prefix cache (nothing is counted). */
  allocateEmpty(): number {
    const seq = this.cache.allocate();
    this.seqs.set(seq, { keys: [] });
    return seq;
  }

  /** Drops every cached block nobody holds (tests and a memory-pressure valve). */
  clearCache(): void {
    this.reserve(this.cache.numBlocks);
  }

  private touch(key: string, b: number): void {
    this.byKey.delete(key);
    this.byKey.set(key, b);
  }
}
