// combineRowsResident (the MoE combine on resident rows): bitwise the JavaScript loop it replaces —
// each step f32(acc + w·h) from +0 (accumulating: from out's rows as they were), then + s — for odd and
// even row widths, tokens with no entries, with and without shared rows, the rows after `out` untouched;
// host arrays: false, nothing run.
import { afterAll, describe, expect, it } from 'vitest';
import { allocResident, freeResident, setGemmThreads } from '../src/cpu/gemm/index.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { combineRowsResident } from '../src/cpu/combine-rows-simd.js';
import { Rng } from '../src/index.js';

const kept: Float32Array[] = [];
afterAll(() => kept.forEach((a) => freeResident(a)));
const resident = (n: number) => {
  const a = allocResident('f32', n) as Float32Array;
  kept.push(a);
  return a;
};

describe('combineRowsResident', () => {
  setGemmThreads(2);
  const rng = new Rng(8);
  for (const [T, H, N, shared] of [
    [5, 7, 11, true],
    [9, 64, 30, false],
    [3, 1, 4, true],
    [70, 33, 420, true], // token ranges split into tasks, on the workers too
  ] as const)
    for (const accumulate of [false, true])
      it(`T ${T}, H ${H}, ${N} entries, ${shared ? 'with' : 'no'} shared rows${accumulate ? ', accumulating' : ''}: the loop's bits`, () => {
        const h = resident(N * H),
          s = shared ? resident(T * H) : null,
          w = resident(N),
          out = resident(T * H + 4);
        for (const a of [h, s ?? h]) for (let i = 0; i < a.length; i++) a[i] = 4 * rng.uniform() - 2;
        for (let i = 0; i < N; i++) w[i] = rng.uniform();
        // token of each entry (token 1 gets none), entries sorted by token, then the rows in a shuffled order
        const tok = Array.from({ length: N }, (_, i) => (i % T === 1 ? 0 : i % T)).sort((a, b) => a - b);
        const starts = new Int32Array(resident(T + 1).buffer, kept.at(-1)!.byteOffset, T + 1);
        for (let t = 0; t <= T; t++) starts[t] = tok.filter((x) => x < t).length;
        const order = new Int32Array(resident(N).buffer, kept.at(-1)!.byteOffset, N);
        order.set(Array.from({ length: N }, (_, i) => (i * 7) % N));
        const o = out.subarray(0, T * H);
        const before0 = Float32Array.from({ length: T * H }, () => 4 * rng.uniform() - 2);
        const e = getEngine()!;
        const before = e.workerTasks();
        // a worker spawned by this call may start after the caller has claimed every task: repeat a while
        const deadline = Date.now() + 5000;
        do {
          out.fill(Number.NaN);
          if (accumulate) o.set(before0);
          expect(combineRowsResident(o, h, s, order, starts, w, H, accumulate)).toBe(true);
        } while (T >= 64 && e.canThread() && e.workerTasks() === before && Date.now() < deadline);
        if (T >= 64 && e.canThread()) expect(e.workerTasks(), 'tasks run on a worker').toBeGreaterThan(before);
        const want = accumulate ? before0.slice() : new Float32Array(T * H);
        for (let t = 0; t < T; t++) {
          for (let i = starts[t]!; i < starts[t + 1]!; i++)
            for (let j = 0; j < H; j++) want[t * H + j] = want[t * H + j]! + w[i]! * h[order[i]! * H + j]!;
          if (s) for (let j = t * H; j < (t + 1) * H; j++) want[j] = want[j]! + s[j]!;
        }
        expect(Buffer.from(o.slice().buffer).equals(Buffer.from(want.buffer))).toBe(true);
        expect(Array.from(out.subarray(T * H)).every(Number.isNaN), 'past out: untouched').toBe(true);
      });

  it('host arrays: false, nothing run', () => {
    const out = new Float32Array(4).fill(3);
    const r = resident(4);
    expect(combineRowsResident(out, r, null, new Int32Array(1), new Int32Array(2), new Float32Array(1), 4)).toBe(false);
    expect(Array.from(out)).toEqual([3, 3, 3, 3]);
  });
});
