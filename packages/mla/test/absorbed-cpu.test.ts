// The absorbed products of CPU inference (absorbed-cpu.ts) past the GEMV's rows: one GEMM batched over
// the heads on the activations in place must give, bit for bit, what the general absorbed path
// computes (kv_b_proj narrowed per head, the activations permuted, a batched matmul, permuted back),
// and float64 within 1e-6; ragged sizes, several batch rows, more rows than a GEMM row block (128).
import { describe, expect, it } from 'vitest';
import { matmul, narrow, noGrad, permute, reshape, type Tensor } from '@dsv3/core';
import {
  ABSORBED_CPU_GEMV_MAX_ROWS,
  absorbedCpuWeights,
  absorbOutputCpu,
  absorbQueryCpu,
} from '../src/absorbed-cpu.js';
import { randT, relErr } from './helpers.js';

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
      expect(Array.from(q.dataSync())).toEqual(Array.from(qGeneral.dataSync()));
      expect(Array.from(o.dataSync())).toEqual(Array.from(oGeneral.dataSync()));
      const rows = B * S;
      const qRef = reference(qNope.dataSync() as Float32Array, rows, H, dc, dn, (h, c, i) => kvRow(h, i, c));
      const oRef = reference(oLat.dataSync() as Float32Array, rows, H, dv, dc, (h, v, c) => kvRow(h, dn + v, c));
      expect(relErr(q.dataSync() as Float32Array, qRef)).toBeLessThan(1e-6);
      expect(relErr(o.dataSync() as Float32Array, oRef)).toBeLessThan(1e-6);
    });
  });
});
