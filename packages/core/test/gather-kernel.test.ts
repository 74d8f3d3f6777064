// The CPU gather kernel (indexSelect): f32 rows along axis 0 in the GEMM engine's memory go to the
// engine's row-copy kernel (both threads, the indices staged there), single elements to a plain loop,
// the rest to the row loop — every path exactly x's rows (a copy: bitwise, NaN and -0 included), the
// same bits as from host rows; an index outside x is the kernel's RangeError.
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { CpuStorage } from '../src/cpu/backend.js';
import { allocResident, freeResident, isResident, setGemmThreads } from '../src/cpu/gemm/index.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { takeF32 } from '../src/cpu/pool.js';
import { Rng } from '../src/rng.js';

afterAll(() => setGemmThreads(2));
const rng = new Rng(1616);
/** the floats' bytes, compared as one buffer (NaN and -0 kept apart) */
const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** x's data as a tensor of `shape` over exactly the array given (resident or host). */
const wrapped = (x: Float32Array, shape: number[]) => new T.Tensor(T.defaultBackend(), new CpuStorage(x), shape, 'f32');

/** out[o, j, i] = x[o, ids[j], i] with x [outer, len, inner]. */
function reference(x: Float32Array, ids: Int32Array, outer: number, len: number, inner: number): Float32Array {
  const out = new Float32Array(outer * ids.length * inner);
  for (let o = 0; o < outer; o++)
    for (let j = 0; j < ids.length; j++)
      for (let i = 0; i < inner; i++) out[(o * ids.length + j) * inner + i] = x[(o * len + ids[j]!) * inner + i]!;
  return out;
}

function values(n: number, resident: boolean): Float32Array {
  const x = resident ? takeF32(n) : new Float32Array(n);
  rng.fillUniform(x, -2, 2);
  x[0] = Number.NaN;
  x[n - 1] = -0;
  return x;
}

describe('gather (indexSelect) on the CPU', () => {
  for (const threads of [1, 2])
    for (const [len, H, n] of [
      [1024, 128, 4096], // the tiny preset's MoE dispatch: 1024 tokens, 4 experts each
      [97, 45, 291],
      [40, 257, 63],
      [258, 128, 1024], // an embedding
      [5, 3, 1],
    ] as const)
      it(`${n} rows of ${H} from ${len}, ${threads} thread(s): x's rows, resident and host alike`, () => {
        setGemmThreads(threads);
        const ids = Int32Array.from({ length: n }, (_, j) => (j % 7 === 3 ? len - 1 : Math.floor(rng.uniform() * len)));
        const xHost = values(len * H, false);
        const want = bits(reference(xHost, ids, 1, len, H));
        const xRes = allocResident('f32', len * H) as Float32Array;
        xRes.set(xHost);
        expect(isResident(xRes), 'x in the engine').toBe(true);
        const e = getEngine()!;
        const before = e.workerTasks();
        const deadline = Date.now() + 5000;
        let got: Float32Array;
        do {
          const out = T.indexSelect(wrapped(xRes, [len, H]), T.tensor(ids, { dtype: 'i32' }), 0);
          expect(out.shape).toEqual([n, H]);
          got = (out.dataSync() as Float32Array).slice();
        } while (threads === 2 && n >= 256 && e.canThread() && e.workerTasks() === before && Date.now() < deadline);
        if (threads === 2 && n >= 256 && e.canThread())
          expect(e.workerTasks(), 'rows copied on a worker').toBeGreaterThan(before);
        freeResident(xRes);
        expect(bits(got).equals(want)).toBe(true);
        const host = T.indexSelect(wrapped(xHost, [len, H]), T.tensor(ids, { dtype: 'i32' }), 0);
        expect(bits(host.dataSync() as Float32Array).equals(want)).toBe(true);
      });

  it("single elements and an inner axis: x's elements", () => {
    for (const resident of [true, false]) {
      const x = values(300, resident);
      const ids = Int32Array.from({ length: 1200 }, (_, j) => (j * 37 + (j >> 3)) % 300);
      const flat = T.indexSelect(wrapped(x, [300]), T.tensor(ids, { dtype: 'i32' }), 0);
      expect(bits(flat.dataSync() as Float32Array).equals(bits(reference(x, ids, 1, 300, 1)))).toBe(true);
      const cols = Int32Array.of(4, 0, 4, 9, 1);
      const y = T.indexSelect(wrapped(x, [3, 10, 10]), T.tensor(cols, { dtype: 'i32' }), 1);
      expect(y.shape).toEqual([3, 5, 10]);
      expect(bits(y.dataSync() as Float32Array).equals(bits(reference(x, cols, 3, 10, 10)))).toBe(true);
    }
  });

  it('an index outside x: RangeError naming it, resident rows and single elements alike', () => {
    const x = values(12 * 8, true);
    for (const [shape, bad] of [
      [[12, 8], 12],
      [[12, 8], -1],
      [[96], 96],
    ] as const) {
      const ids = T.tensor(Int32Array.of(0, 3, bad), { dtype: 'i32' });
      expect(() => T.indexSelect(wrapped(x, [...shape]), ids, 0)).toThrow(
        new RangeError(`gather: index ${bad} is out of range [0, ${shape[0]})`),
      );
    }
  });
});
