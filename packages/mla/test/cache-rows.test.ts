// The CPU kernel that appends latents to a cache pool (cache-rows.ts's writeRowsCpu): rows scattered to
// pool rows, runs of consecutive pool rows copied at once. It must write exactly what a row-by-row loop
// in index order writes: runs, single rows, descending and repeated indices (the later write wins),
// f32 and bf16 pools; a bad index is refused before any row is written.
import { describe, expect, it } from 'vitest';
import { cpu, type CpuStorage, type DType, type Tensor, tensor } from '@dsv3/core';
import { writeRowsCpu } from '../src/cache-rows.js';

function rowByRow(pool: Float32Array | Uint16Array, src: Float32Array | Uint16Array, idx: Int32Array, W: number) {
  const out = pool.slice();
  for (let i = 0; i < idx.length; i++) for (let c = 0; c < W; c++) out[idx[i]! * W + c] = src[i * W + c]!;
  return out;
}

const dataOf = (t: Tensor) => (t.storage as CpuStorage).data as Float32Array | Uint16Array;

describe('writeRowsCpu', () => {
  const [P, W] = [40, 5];
  const cases: [string, number[]][] = [
    ['one run', [3, 4, 5, 6, 7, 8]],
    ['runs with gaps (a block table)', [16, 17, 18, 19, 0, 1, 2, 3, 32, 33, 8]],
    ['single rows, descending', [9, 7, 5, 3, 1]],
    ['repeated rows: the later write wins', [2, 3, 4, 3, 4, 5, 4]],
    ['a run then its start again', [10, 11, 12, 10]],
    ['every row', Array.from({ length: P }, (_, i) => i)],
    ['none', []],
  ];
  for (const dtype of ['f32', 'bf16'] as DType[])
    for (const [name, rows] of cases)
      it(`${dtype}: ${name}`, () => {
        const init = Float32Array.from({ length: P * W }, (_, i) => -1 - (i % 7));
        const pool = tensor(init, { shape: [P, W], dtype });
        const src = tensor(
          Float32Array.from({ length: rows.length * W }, (_, i) => i + 0.5),
          { shape: [rows.length, W], dtype },
        );
        const idx = tensor(Int32Array.from(rows), { shape: [rows.length], dtype: 'i32' });
        const poolData = dataOf(pool);
        const want = rowByRow(poolData, dataOf(src), Int32Array.from(rows), W);
        expect(writeRowsCpu(cpu, [pool, src, idx] as never)).toEqual([]);
        expect(Array.from(poolData)).toEqual(Array.from(want));
      });

  it('refuses a bad index before writing any row', () => {
    const pool = tensor(new Float32Array(P * W), { shape: [P, W] });
    const src = tensor(
      Float32Array.from({ length: 2 * W }, (_, i) => i + 1),
      { shape: [2, W] },
    );
    const idx = tensor(Int32Array.of(0, P), { shape: [2], dtype: 'i32' });
    expect(() => writeRowsCpu(cpu, [pool, src, idx] as never)).toThrow(/outside the pool/);
    expect(Array.from(dataOf(pool)).every((v) => v === 0)).toBe(true);
  });
});
