// scatterAdd into zeros along axis 0 (a row gather's gradient: the MoE's dispatch, an embedding) on f32
// rows in the GEMM engine's memory runs the SIMD row kernel over destination ranges on the engine's
// threads: bitwise the JavaScript loop (host rows, the same counting sort and f64 sums rounded once),
// ragged widths, rows hit many times and never, 1 and 2 threads; within f32 rounding of float64.
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { expectSameBits } from '../src/testing.js';
import { CpuStorage } from '../src/cpu/backend.js';
import { isResident, setGemmThreads } from '../src/cpu/gemm/index.js';
import { takeF32 } from '../src/cpu/pool.js';
import { exec } from '../src/ops/exec.js';
import { Rng } from '../src/rng.js';

afterAll(() => setGemmThreads(2));
const rng = new Rng(616);

/** scatterAdd(zeros [D, H], ids, src) with src wrapped as it is (resident or host). */
function scatter(src: Float32Array, ids: Int32Array, D: number, H: number): Float32Array {
  const be = T.defaultBackend();
  const s = new T.Tensor(be, new CpuStorage(src), [ids.length, H], 'f32');
  const zeros = T.full([D, H], 0);
  const out = exec('scatterAdd', [zeros, T.tensor(ids, { dtype: 'i32' }), s], { axis: 0, zeros: true })[0]!;
  return (out.dataSync() as Float32Array).slice();
}

describe('scatterAdd rows in SIMD on resident rows', () => {
  for (const threads of [1, 2])
    for (const [D, N, H] of [
      [300, 1800, 64],
      [97, 291, 45],
      [512, 2048, 130],
      [40, 900, 257],
      [1000, 64, 96],
    ] as const)
      it(`${N} rows into ${D} x ${H}, ${threads} thread(s): bitwise the loop, within f32 rounding of float64`, () => {
        setGemmThreads(threads);
        // skewed: some rows get many sources, others (the last) none
        const ids = Int32Array.from({ length: N }, () => Math.floor(rng.uniform() ** 2 * (D - 1)));
        const src = takeF32(N * H);
        rng.fillUniform(src, -1, 1);
        expect(isResident(src)).toBe(true);
        const got = scatter(src, ids, D, H);
        const host = scatter(src.slice(), ids, D, H);
        expectSameBits(got, host, 'got', { nan: 'bits' });
        const ref = new Float64Array(D * H);
        const hits = new Int32Array(D);
        for (let j = 0; j < N; j++) {
          hits[ids[j]!]!++;
          for (let i = 0; i < H; i++) ref[ids[j]! * H + i]! += src[j * H + i]!;
        }
        for (let i = 0; i < ref.length; i++)
          expect(Math.abs(got[i]! - ref[i]!)).toBeLessThanOrEqual(Math.abs(ref[i]!) * 2 ** -24);
        expect(Array.from(got.subarray((D - 1) * H))).toEqual(new Array(H).fill(0));
        expect(hits[D - 1]).toBe(0);
      });
});
