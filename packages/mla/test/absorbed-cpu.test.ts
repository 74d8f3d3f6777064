// The absorbed products of CPU inference (absorbed-cpu.ts), two parts:
// 1. Past the GEMV's rows with an f32 layout: one GEMM batched over the heads on the activations in place
//    must give, bit for bit, what the general absorbed path computes (kv_b_proj narrowed per head, the
//    activations permuted, a batched matmul, permuted back), and float64 within 1e-6; ragged sizes,
//    several batch rows, more rows than a GEMM row block (128).
// 2. Against float64 per head: with kv_b_proj of arbitrary f32 values the per-head layout is f32; with
//    every value a bf16 (a bf16 checkpoint widened to f32) it is bf16, the same values in half the bytes,
//    summed by the bf16 GEMV (past the GEMV's rows, the weight GEMM) in its own order — so both layouts
//    are checked against float64, not against each other.
import { describe, expect, it } from 'vitest';
import { expectSameBits } from '@dsv3/core/testing';
import {
  decodeBf16,
  encodeBf16,
  matmul,
  narrow,
  noGrad,
  permute,
  reshape,
  setGemmThreads,
  type Tensor,
  tensor,
  weightProduct,
} from '@dsv3/core';
import {
  ABSORBED_CPU_GEMV_MAX_ROWS,
  absorbedCpuWeights,
  absorbOutputCpu,
  absorbQueryCpu,
} from '../src/absorbed-cpu.js';
import { randArray, randT, relErr } from './helpers.js';

/** y[r, h, :] = W[h] · x[r, h, :] in float64, W[h][j][p] = w(h, j, p). */
function reference(
  x: Float32Array,
  rows: number,
  H: number,
  n: number,
  k: number,
  w: (h: number, j: number, p: number) => number,
) {
  const y = new Float64Array(rows * H * n);
  for (let r = 0; r < rows; r++)
    for (let h = 0; h < H; h++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += x[(r * H + h) * k + p]! * w(h, j, p);
        y[(r * H + h) * n + j] = s;
      }
  return y;
}

describe('absorbed CPU products past the per-head GEMV rows: one batched GEMM in place', () => {
  const [H, dn, dv, dc] = [3, 16, 12, 40];
  const kvB = randT([H * (dn + dv), dc], 5);
  const kvBData = kvB.dataSync() as Float32Array;
  const a = absorbedCpuWeights(kvB, { H, dn, dv, dc }, null);
  const d = { H, dn, dv, dc };
  const w3 = reshape(kvB, [H, dn + dv, dc]);
  const wUK = narrow(w3, 1, 0, dn);
  const wUV = narrow(w3, 1, dn, dv);
  // kv_b_proj row of head h: W_UK[h] rows 0..dn-1, W_UV[h] rows dn..dn+dv-1, each dc wide
  const kvRow = (h: number, i: number, c: number): number => kvBData[(h * (dn + dv) + i) * dc + c]!;

  it.each([
    [1, ABSORBED_CPU_GEMV_MAX_ROWS + 1],
    [2, 9],
    [1, 130],
    [3, 47],
  ])('B=%i S=%i: q_nope · W_UK and o_lat · W_UVᵀ bitwise the permuted batched matmul; float64 within 1e-6', (B, S) => {
    noGrad(() => {
      const qNope = randT([B, S, H, dn], 100 + S);
      const oLat = randT([B, S, H, dc], 200 + S);
      const q = absorbQueryCpu(qNope, a, d);
      const o = absorbOutputCpu(oLat, a, d);
      expect(q.shape).toEqual([B, S, H, dc]);
      expect(o.shape).toEqual([B, S, H * dv]);
      const qGeneral: Tensor = permute(matmul(permute(qNope, [0, 2, 1, 3]), wUK), [0, 2, 1, 3]);
      const oGeneral: Tensor = reshape(
        permute(matmul(permute(oLat, [0, 2, 1, 3]), wUV, { transB: true }), [0, 2, 1, 3]),
        [B, S, H * dv],
      );
      expectSameBits(q.dataSync(), qGeneral.dataSync(), 'q');
      expectSameBits(o.dataSync(), oGeneral.dataSync(), 'o');
      const rows = B * S;
      const qRef = reference(qNope.dataSync() as Float32Array, rows, H, dc, dn, (h, c, i) => kvRow(h, i, c));
      const oRef = reference(oLat.dataSync() as Float32Array, rows, H, dv, dc, (h, v, c) => kvRow(h, dn + v, c));
      expect(relErr(q.dataSync() as Float32Array, qRef)).toBeLessThan(1e-6);
      expect(relErr(o.dataSync() as Float32Array, oRef)).toBeLessThan(1e-6);
    });
  });
});

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
  [
    'a prefill (past the GEMV rows: batched GEMM for f32, the weight GEMM for bf16)',
    { H: 3, dn: 13, dv: 7, dc: 37 },
    130,
  ],
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

describe('bf16 layout, a prefill: the per-head rows in the engine memory', () => {
  // Each head's rows are gathered into kept arrays in the GEMM engine's memory, which the weight GEMM
  // reads and writes in place: the bits of each head's weightProduct on host copies, at 1 and 2
  // threads, with the kept arrays reused across calls of other sizes.
  const d = { H: 4, dn: 64, dv: 64, dc: 256 };
  const w = kvB(d, 21, true);
  const a = absorbedCpuWeights(tensor(w, { shape: [d.H * (d.dn + d.dv), d.dc] }), d, null);
  const byHead = (x: Float32Array, W: Uint16Array, rows: number, n: number, k: number): Float32Array => {
    const y = new Float32Array(rows * d.H * n);
    for (let h = 0; h < d.H; h++) {
      const xh = new Float32Array(rows * k);
      for (let r = 0; r < rows; r++) xh.set(x.subarray((r * d.H + h) * k, (r * d.H + h + 1) * k), r * k);
      const yh = new Float32Array(rows * n);
      weightProduct({ m: rows, n, k, x: xh, w: W.subarray(h * n * k, (h + 1) * n * k), y: yh });
      for (let r = 0; r < rows; r++) y.set(yh.subarray(r * n, (r + 1) * n), (r * d.H + h) * n);
    }
    return y;
  };
  /** The first index where a and b differ in bits, or -1 (a readable failure on long arrays). */
  const firstDiff = (a: Float32Array, b: Float32Array): number =>
    a.length !== b.length ? 0 : a.findIndex((v, i) => !Object.is(v, b[i]));
  for (const threads of [1, 2])
    it(`${threads} thread(s): bitwise each head's weight product on host rows`, () => {
      setGemmThreads(threads);
      for (const rows of [130, 9, 517]) {
        const q = Float32Array.from(randArray(rows * d.H * d.dn, rows));
        const o = Float32Array.from(randArray(rows * d.H * d.dc, rows + 1));
        noGrad(() => {
          const qL = absorbQueryCpu(tensor(q, { shape: [1, rows, d.H, d.dn] }), a, d).dataSync();
          const oV = absorbOutputCpu(tensor(o, { shape: [1, rows, d.H, d.dc] }), a, d).dataSync();
          const uk = a.wUKt.data as Uint16Array,
            uv = a.wUV.data as Uint16Array;
          expect(firstDiff(qL as Float32Array, byHead(q, uk, rows, d.dc, d.dn)), `q', ${rows} rows`).toBe(-1);
          expect(firstDiff(oV as Float32Array, byHead(o, uv, rows, d.dv, d.dc)), `o, ${rows} rows`).toBe(-1);
        });
      }
      setGemmThreads(2);
    });
});
