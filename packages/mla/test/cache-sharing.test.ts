// Sharing blocks between sequences by id (what a prefix cache does): allocateWithBlocks, retainBlock,
// releaseBlock; reference counts and the free list stay consistent, and bad uses are named.
import { describe, expect, it } from 'vitest';
import { PagedLatentCache } from '../src/index.js';

const mk = (): PagedLatentCache =>
  new PagedLatentCache({ numLayers: 2, kvLoraRank: 3, ropeDim: 2, numBlocks: 6, blockSize: 2 });
const rows = (n: number, w: number, base: number): number[] => Array.from({ length: n * w }, (_, i) => base + i);

describe('PagedLatentCache block sharing', () => {
  it('a sequence built on retained blocks reads the shared prefix and writes past it', () => {
    const c = mk();
    const a = c.allocate();
    for (let l = 0; l < 2; l++) c.append(l, a, rows(4, 3, 10 * l), rows(4, 2, 100 + 10 * l));
    const prefix = c.blockTable(a);
    for (const b of prefix) c.retainBlock(b);
    c.free(a);
    expect(c.freeBlocks).toBe(4);
    const b = c.allocateWithBlocks(prefix, [4]);
    expect(c.length(b, 0)).toBe(4);
    expect(c.length(b, 1)).toBe(0);
    expect(Array.from(c.read(0, b).ckv)).toEqual(rows(4, 3, 0));
    c.append(0, b, rows(1, 3, 50), rows(1, 2, 60));
    expect(c.blockTable(b).slice(0, 2)).toEqual(prefix);
    expect(c.blockRefCount(prefix[0]!)).toBe(2);
    c.free(b);
    for (const x of prefix) c.releaseBlock(x);
    expect(c.freeBlocks).toBe(6);
  });

  it('names bad uses', () => {
    const c = mk();
    expect(() => c.retainBlock(0)).toThrow(/not in use/);
    expect(() => c.releaseBlock(0)).toThrow(/not in use/);
    expect(() => c.allocateWithBlocks([0], [1])).toThrow(/not in use/);
    const a = c.allocate();
    c.append(0, a, rows(2, 3, 0), rows(2, 2, 0));
    expect(() => c.allocateWithBlocks(c.blockTable(a), [3])).toThrow(/does not fit/);
    expect(() => c.allocateWithBlocks(c.blockTable(a), [1, 1, 1])).toThrow(/3 layer lengths/);
  });
});
