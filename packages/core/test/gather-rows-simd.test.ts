// gatherRowsResident (the MoE's gather of token rows in dispatch order, on the engine's threads): out's
// row r is exactly x's row rows[r] — repeated and skipped rows, odd and even widths, row ranges split
// into tasks that run on the workers too — with the floats after `out` untouched; host arrays: false,
// nothing copied; a row index outside x or a mis-sized out: RangeError.
import { afterAll, describe, expect, it } from 'vitest';
import { allocResident, freeResident, setGemmThreads } from '../src/cpu/gemm/index.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { gatherRowsResident } from '../src/cpu/gather-rows-simd.js';
import { Rng } from '../src/index.js';

const kept: Float32Array[] = [];
afterAll(() => kept.forEach((a) => freeResident(a)));
const resident = (n: number) => {
  const a = allocResident('f32', n) as Float32Array;
  kept.push(a);
  return a;
};
const residentRows = (rows: number[]) => {
  const a = resident(rows.length);
  const r = new Int32Array(a.buffer, a.byteOffset, rows.length);
  r.set(rows);
  return r;
};

describe('gatherRowsResident', () => {
  setGemmThreads(2);
  const rng = new Rng(19);
  for (const [T, H, n] of [
    [5, 7, 11],
    [9, 64, 1],
    [3, 1, 4],
    [40, 33, 63],
    [70, 1023, 420], // row ranges split into tasks, on the workers too
    [512, 1024, 3072], // V3-mini's prefill: 512 tokens, 6 experts each
  ] as const) {
    it(`${n} rows of ${H} from ${T}: x's rows, bitwise`, () => {
      const x = resident(T * H),
        out = resident(n * H + 5);
      for (let i = 0; i < x.length; i++) x[i] = 4 * rng.uniform() - 2;
      x[0] = Number.NaN; // copied as is
      x[x.length - 1] = -0;
      // every token several times in a shuffled order, the last row too, some tokens skipped when n < T
      const rows = residentRows(Array.from({ length: n }, (_, r) => (r * 7 + (r % 3)) % T));
      rows[n - 1] = T - 1;
      const o = out.subarray(0, n * H);
      const e = getEngine()!;
      const before = e.workerTasks();
      // a worker spawned by this call may start after the caller has claimed every task: repeat a while
      const deadline = Date.now() + 5000;
      do {
        out.fill(1.5);
        expect(gatherRowsResident(o, x, rows, H)).toBe(true);
      } while (n >= 256 && e.canThread() && e.workerTasks() === before && Date.now() < deadline);
      if (n >= 256 && e.canThread()) expect(e.workerTasks(), 'tasks run on a worker').toBeGreaterThan(before);
      const want = new Float32Array(n * H);
      for (let r = 0; r < n; r++) for (let j = 0; j < H; j++) want[r * H + j] = x[rows[r]! * H + j]!;
      expect(Buffer.from(o.slice().buffer).equals(Buffer.from(want.buffer))).toBe(true);
      expect(
        Array.from(out.subarray(n * H)).every((v) => v === 1.5),
        'past out: untouched',
      ).toBe(true);
    });
  }

  it('host arrays: false, nothing copied; bad rows or sizes: RangeError', () => {
    const x = resident(4 * 3),
      out = resident(2 * 3);
    const rows = residentRows([1, 3]);
    out.fill(7);
    expect(gatherRowsResident(new Float32Array(6), x, rows, 3)).toBe(false);
    expect(gatherRowsResident(out, new Float32Array(12), rows, 3)).toBe(false);
    expect(gatherRowsResident(out, x, Int32Array.of(1, 3), 3)).toBe(false);
    expect(Array.from(out).every((v) => v === 7)).toBe(true);
    expect(() => gatherRowsResident(out, x, residentRows([1, 4]), 3)).toThrow(RangeError);
    expect(() => gatherRowsResident(out, x, residentRows([-1, 0]), 3)).toThrow(RangeError);
    expect(() => gatherRowsResident(out.subarray(0, 5), x, rows, 3)).toThrow(RangeError);
  });
});
