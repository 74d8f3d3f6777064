// The element-wise reductions collectives run: f32 sums and products through the WebAssembly SIMD
// kernel must equal the scalar loop bit for bit (lengths around the block and lane boundaries,
// signed zeros, subnormals, overflow, infinities, NaN).
import { Rng } from '@dsv3/core';
import { describe, expect, it } from 'vitest';
import { REDUCE_OPS, combineAllInto, combineInto, simdReductions } from '../src/comm/reduce.js';

function operand(rng: Rng, n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng.uniform() - 0.5) * 2 ** rng.integer(-140, 128);
  return a;
}

describe('combineInto', () => {
  it('runs f32 sums and products through the SIMD kernel here (Node has WebAssembly SIMD128)', () => {
    expect(simdReductions()).toBe(true);
  });

  for (const op of ['sum', 'avg', 'prod'] as const)
    it(`f32 ${op} equals the scalar loop bitwise`, () => {
      const rng = new Rng(op.length);
      for (const n of [1023, 1024, 1025, 16383, 16384, 16387, 50_001]) {
        const acc = operand(rng, n);
        const src = operand(rng, n);
        acc.set([Number.NaN, -0, 0, 1e-45, 3e38, Number.POSITIVE_INFINITY, -1e-40]);
        src.set([1, -0, -0, 1e-45, 3e38, Number.NEGATIVE_INFINITY, 2e-40], 0);
        const want = new Float32Array(n);
        for (let i = 0; i < n; i++) want[i] = op === 'prod' ? acc[i]! * src[i]! : acc[i]! + src[i]!;
        combineInto(acc, src, op);
        const got = new Uint32Array(acc.buffer);
        const ref = new Uint32Array(want.buffer);
        let bad = -1;
        for (let i = 0; i < n && bad < 0; i++)
          if (got[i] !== ref[i] && !(Number.isNaN(acc[i]) && Number.isNaN(want[i]))) bad = i;
        expect(bad, `n=${n}: element ${bad} is ${acc[bad]}, want ${want[bad]}`).toBe(-1);
      }
    });

  it('max and min keep NaN winning and the first of equal zeros', () => {
    const acc = new Float32Array(2048).fill(1);
    const src = new Float32Array(2048).fill(2);
    acc[0] = -0;
    src[0] = 0;
    src[1] = Number.NaN;
    combineInto(acc, src, 'max');
    expect(Object.is(acc[0], -0)).toBe(true);
    expect(acc[1]).toBeNaN();
    expect(acc[2]).toBe(2);
    combineInto(acc, new Float32Array(2048).fill(-5), 'min');
    expect(acc[2]).toBe(-5);
  });

  it('rejects operands of different lengths', () => {
    expect(() => combineInto(new Float32Array(4), new Float32Array(5), 'sum')).toThrow(/reducing 5 elements into 4/);
    expect(() => combineAllInto(new Float32Array(4), [new Float32Array(4), new Float32Array(3)], 'sum')).toThrow(
      /reducing 3 elements into 4/,
    );
  });
});

describe('combineAllInto', () => {
  // Several sources at once must give bitwise what one combineInto per source, in order, gives.
  for (const op of REDUCE_OPS)
    it(`f32 ${op} over 1-7 sources equals combineInto source by source, bitwise`, () => {
      const rng = new Rng(100 + op.length);
      for (const [n, m] of [
        [5, 3],
        [1023, 2],
        [16384, 3],
        [16387, 7],
        [50_001, 1],
        [40_000, 4],
      ] as const) {
        const acc = operand(rng, n);
        acc.set([Number.NaN, -0, 0, 1e-45, 3e38]);
        const srcs = Array.from({ length: m }, () => operand(rng, n));
        const want = acc.slice();
        for (const src of srcs) combineInto(want, src, op);
        combineAllInto(acc, srcs, op);
        const got = new Uint32Array(acc.buffer);
        const ref = new Uint32Array(want.buffer);
        let bad = -1;
        for (let i = 0; i < n && bad < 0; i++)
          if (got[i] !== ref[i] && !(Number.isNaN(acc[i]) && Number.isNaN(want[i]))) bad = i;
        expect(bad, `n=${n} m=${m}: element ${bad} is ${acc[bad]}, want ${want[bad]}`).toBe(-1);
      }
    });

  it('reduces f64, i32 and u32 arrays source by source', () => {
    const acc = new Int32Array([1, 2, 3]);
    combineAllInto(acc, [new Int32Array([10, 20, 30]), new Int32Array([100, 200, 300])], 'sum');
    expect([...acc]).toEqual([111, 222, 333]);
    const f = new Float64Array([1, 5]);
    combineAllInto(f, [new Float64Array([3, 2]), new Float64Array([2, 9])], 'max');
    expect([...f]).toEqual([3, 9]);
  });
});
