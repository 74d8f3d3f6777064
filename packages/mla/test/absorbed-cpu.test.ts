// The absorbed CPU products (absorbed-cpu.ts) against float64 per head: with kv_b_proj of arbitrary f32
// values the per-head layout is f32; with every value a bf16 (a bf16 checkpoint widened to f32) it is
// bf16, the same values in half the bytes, summed by the bf16 GEMV in its own order (even and odd
// weights of each 8 in separate accumulators) — so both are checked against float64, not against each other.
import { describe, expect, it } from 'vitest';
import { encodeBf16, decodeBf16, noGrad, tensor } from '@dsv3/core';
import { absorbedCpuWeights, absorbOutputCpu, absorbQueryCpu } from '../src/absorbed-cpu.js';
import { randArray } from './helpers.js';

interface Dims {
  H: number;
  dn: number;
  dv: number;
  dc: number;
}

/** kv_b_proj [H·(dn + dv), dc]: random, or random rounded to bf16. */
function kvB(d: Dims, seed: number, bf16: boolean): Float32Array {
  const w = Float32Array.from(randArray(d.H * (d.dn + d.dv) * d.dc, seed, -0.5, 0.5));
  return bf16 ? decodeBf16(encodeBf16(w)) : w;
}

/** Float64 per head: q'[r, h, c] = Σ_i q[r, h, i] · W[h·(dn+dv) + i, c]; o[r, h, j] = Σ_c o[r, h, c] · W[h·(dn+dv) + dn + j, c]. */
function refQuery(q: Float32Array, w: Float32Array, d: Dims, rows: number): Float64Array {
  const out = new Float64Array(rows * d.H * d.dc);
  for (let r = 0; r < rows; r++)
    for (let h = 0; h < d.H; h++)
      for (let c = 0; c < d.dc; c++) {
        let s = 0;
        for (let i = 0; i < d.dn; i++) s += q[(r * d.H + h) * d.dn + i]! * w[(h * (d.dn + d.dv) + i) * d.dc + c]!;
        out[(r * d.H + h) * d.dc + c] = s;
      }
  return out;
}
function refOutput(o: Float32Array, w: Float32Array, d: Dims, rows: number): Float64Array {
  const out = new Float64Array(rows * d.H * d.dv);
  for (let r = 0; r < rows; r++)
    for (let h = 0; h < d.H; h++)
      for (let j = 0; j < d.dv; j++) {
        let s = 0;
        for (let c = 0; c < d.dc; c++)
          s += o[(r * d.H + h) * d.dc + c]! * w[(h * (d.dn + d.dv) + d.dn + j) * d.dc + c]!;
        out[(r * d.H + h) * d.dv + j] = s;
      }
  return out;
}

/** Largest |a − ref| over the largest |ref|. */
function maxRelErr(a: ArrayLike<number>, ref: Float64Array): number {
  let err = 0,
    big = 0;
  for (let i = 0; i < ref.length; i++) {
    err = Math.max(err, Math.abs(a[i]! - ref[i]!));
    big = Math.max(big, Math.abs(ref[i]!));
  }
  return err / big;
}

const shapes: [string, Dims, number][] = [
  ['V3-like head dims, one row (decode)', { H: 4, dn: 64, dv: 64, dc: 256 }, 1],
  ['ragged dims (not multiples of 8), 3 rows', { H: 3, dn: 13, dv: 7, dc: 37 }, 3],
  ['v wider than nope, 2 rows', { H: 2, dn: 16, dv: 24, dc: 40 }, 2],
];

describe('absorbed CPU products vs float64', () => {
  for (const [name, d, rows] of shapes)
    for (const bf16 of [false, true])
      it(`${name}, kv_b_proj ${bf16 ? 'bf16 values: bf16 layout' : 'f32 values: f32 layout'}`, () => {
        const w = kvB(d, 7, bf16);
        const a = absorbedCpuWeights(tensor(w, { shape: [d.H * (d.dn + d.dv), d.dc] }), d, null);
        expect(a.wUKt.data).toBeInstanceOf(bf16 ? Uint16Array : Float32Array);
        expect(a.wUV.data).toBeInstanceOf(bf16 ? Uint16Array : Float32Array);
        const q = Float32Array.from(randArray(rows * d.H * d.dn, 11));
        const o = Float32Array.from(randArray(rows * d.H * d.dc, 12));
        noGrad(() => {
          const qt = tensor(q, { shape: [1, rows, d.H, d.dn] });
          const ot = tensor(o, { shape: [1, rows, d.H, d.dc] });
          const qL = absorbQueryCpu(qt, a, d);
          const oV = absorbOutputCpu(ot, a, d);
          expect(qL.shape).toEqual([1, rows, d.H, d.dc]);
          expect(oV.shape).toEqual([1, rows, d.H * d.dv]);
          expect(maxRelErr(qL.dataSync(), refQuery(q, w, d, rows))).toBeLessThan(1e-6);
          expect(maxRelErr(oV.dataSync(), refOutput(o, w, d, rows))).toBeLessThan(1e-6);
        });
      });

  it('one value off bf16 keeps the f32 layout (exact values are the rule)', () => {
    const d = { H: 2, dn: 8, dv: 8, dc: 16 };
    const w = kvB(d, 3, true);
    w[17] = Math.fround(w[17]! + 2 ** -20);
    const a = absorbedCpuWeights(tensor(w, { shape: [d.H * (d.dn + d.dv), d.dc] }), d, null);
    expect(a.wUKt.data).toBeInstanceOf(Float32Array);
  });
});
