import { describe, expect, it } from 'vitest';
import { ByteRanges } from '../src/cpu/gemm/byte-ranges.js';

/** The check ByteRanges replaced: every range asked in turn. */
const overlapsAny = (ranges: [number, number][], start: number, end: number): boolean =>
  ranges.some(([r0, r1]) => !(end <= r0 || r1 <= start) && r1 > r0 && end > start);

describe('ByteRanges', () => {
  it('answers as the pairwise check does on random, overlapping, touching and empty ranges', () => {
    let seed = 11;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    for (let trial = 0; trial < 300; trial++) {
      const ranges: [number, number][] = [];
      const count = rand(12);
      for (let i = 0; i < count; i++) {
        const a = rand(200);
        ranges.push([a, a + rand(3) * rand(30)]); // a third empty
      }
      const set = new ByteRanges(ranges);
      for (let q = 0; q < 60; q++) {
        const s = rand(240);
        const e = s + rand(40);
        expect(set.overlaps(s, e), `${JSON.stringify(ranges)} vs [${s}, ${e})`).toBe(overlapsAny(ranges, s, e));
      }
    }
  });

  it('treats ranges as half-open: touching is not overlapping, merged neighbours still are', () => {
    const set = new ByteRanges([
      [10, 20],
      [20, 30],
      [40, 50],
    ]);
    expect(set.overlaps(0, 10)).toBe(false);
    expect(set.overlaps(30, 40)).toBe(false);
    expect(set.overlaps(50, 60)).toBe(false);
    expect(set.overlaps(29, 30)).toBe(true);
    expect(set.overlaps(19, 21)).toBe(true);
    expect(set.overlaps(35, 41)).toBe(true);
    expect(set.overlaps(0, 100)).toBe(true);
    expect(set.overlaps(45, 45)).toBe(false);
    expect(new ByteRanges([]).overlaps(0, 1)).toBe(false);
  });
});
