// Arena.allocRun: blocks for tensors side by side as a file lays them out (one mapping of the file then
// covers them), each released on its own; the blocks handed out after them start aligned again and
// never overlap a live one.
import { describe, expect, it } from 'vitest';
import { ALIGN, Arena, HUGE_PAGE, OS_PAGE, PAGE } from '../src/cpu/gemm/arena.js';

const arena = (): Arena =>
  new Arena(new WebAssembly.Memory({ initial: 1, maximum: 512, shared: true }), 64, 511 * PAGE);

/** Live blocks [at, at + bytes) never overlap. */
const disjoint = (blocks: { at: number; bytes: number }[]): boolean => {
  const s = [...blocks].sort((a, b) => a.at - b.at);
  return s.every((b, i) => i === 0 || s[i - 1]!.at + s[i - 1]!.bytes <= b.at);
};

describe('Arena.allocRun', () => {
  const pieces = [
    { offset: 0, bytes: 14 },
    { offset: 14, bytes: 66_306 },
    { offset: 66_320, bytes: 4096 },
    { offset: 80_000, bytes: 3 }, // after a gap (bytes the run maps, no tensor uses)
    { offset: 80_003, bytes: 9_999 },
  ];

  it("places the pieces at the file's offsets from one another, the first that far into a page", () => {
    for (const pageOffset of [0, 8, 4095]) {
      const a = arena();
      const before = a.alloc(100)!;
      const at = a.allocRun(pieces, 0, pageOffset)!;
      expect(at[0]! % OS_PAGE).toBe(pageOffset);
      expect(at.map((x) => x - at[0]!)).toEqual(pieces.map((p) => p.offset));
      expect(at[0]!).toBeGreaterThanOrEqual(before + 100);
      const last = pieces[pieces.length - 1]!;
      expect(a.usedBytes).toBeGreaterThanOrEqual(128 + last.offset + last.bytes);
    }
  });

  it('within a larger unit (a 2 MiB huge page): the first piece that far into one', () => {
    const a = arena();
    a.alloc(5000);
    for (const phase of [0, 12_345, HUGE_PAGE - 8]) {
      const at = a.allocRun(pieces, 0, phase, HUGE_PAGE)!;
      expect(at[0]! % HUGE_PAGE).toBe(phase);
      expect(at.map((x) => x - at[0]!)).toEqual(pieces.map((p) => p.offset));
    }
  });

  it('releases each piece on its own, in any order; later blocks start aligned and overlap nothing live', () => {
    for (const order of [
      [0, 1, 2, 3, 4],
      [4, 3, 2, 1, 0],
      [2, 0, 4, 1, 3],
    ]) {
      const a = arena();
      const at = a.allocRun(pieces, 0, 1234)!;
      const live = new Map(at.map((x, i) => [i, { at: x, bytes: pieces[i]!.bytes }]));
      const fresh: { at: number; bytes: number }[] = [];
      for (const i of order) {
        a.release(at[i]!);
        live.delete(i);
        for (const bytes of [10, 3000, 70_000]) {
          const b = a.alloc(bytes)!;
          expect(b % ALIGN).toBe(0);
          fresh.push({ at: b, bytes });
          expect(disjoint([...live.values(), ...fresh])).toBe(true);
          // zero-filled, though a piece's bytes may have held anything
          expect(new Uint8Array(a.buffer(), b, bytes).every((v) => v === 0)).toBe(true);
          new Uint8Array(a.buffer(), b, bytes).fill(0xee);
        }
      }
      for (const b of fresh) a.release(b.at);
      expect(a.usedBytes).toBe(0);
      // everything coalesced back: one block as large as all of it fits at the bottom again
      expect(a.alloc(200_000)).toBe(64);
    }
  });

  it('a released piece is unknown afterwards; bad runs are refused with what was wrong', () => {
    const a = arena();
    const at = a.allocRun(pieces, 0, 0)!;
    a.release(at[1]!);
    expect(() => a.release(at[1]!)).toThrow(/arena release of unknown block/);
    expect(() => a.allocRun([], 0, 0)).toThrow(/a run needs pieces, the first at offset 0/);
    expect(() => a.allocRun([{ offset: 5, bytes: 1 }], 0, 0)).toThrow(/the first at offset 0/);
    expect(() =>
      a.allocRun(
        [
          { offset: 0, bytes: 10 },
          { offset: 9, bytes: 1 },
        ],
        0,
        0,
      ),
    ).toThrow(/run piece 1 at 9 overlaps the one before it/);
    expect(() => a.allocRun(pieces, 0, OS_PAGE)).toThrow(/phase must be an integer in \[0, 4096\), got 4096/);
    expect(() => a.allocRun(pieces, 0, 0, 3 * OS_PAGE)).toThrow(/unit must be a power of two from 4096 to 2\^30/);
    expect(() => a.allocRun(pieces, 0, 0, 1024)).toThrow(/unit must be a power of two/);
  });

  it('null where the memory cannot hold the run, or the reserve would be cut into', () => {
    const a = arena();
    expect(a.allocRun([{ offset: 0, bytes: 600 * PAGE }], 0, 0)).toBeNull();
    expect(a.allocRun([{ offset: 0, bytes: 300 * PAGE }], 300 * PAGE, 0)).toBeNull();
    expect(a.allocRun([{ offset: 0, bytes: 300 * PAGE }], 100 * PAGE, 0)).not.toBeNull();
  });
});
