import { Rng } from '@dsv3/core';
import { describe, expect, it } from 'vitest';
import {
  E4M3_LUT,
  activationScale,
  decodeE4M3,
  dequantizeActivation,
  dequantizeActivationColumnwise,
  dequantizeWeight,
  quantizeActivation,
  quantizeActivationColumnwise,
  quantizeActivationTransposed,
  quantizeWeight,
  requantizeColumnwise,
  transpose2d,
  ue8m0Ceil,
  weightScale,
} from '../src/index';
import { f32, mismatches, u8 } from './goldens';

function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = new Rng(seed);
  return new Float32Array(n).map(() => scale * r.normal());
}

/** Max over elements of |deq - x| / (scale of the element's block): the bound is half an e4m3 ulp. */
function checkRoundTrip(x: Float32Array, deq: Float32Array, scaleOf: (i: number) => number): void {
  let worst = 0;
  for (let i = 0; i < x.length; i++) {
    const s = scaleOf(i);
    const v = x[i]! / s; // in [-448, 448]
    const err = Math.abs(deq[i]! - x[i]!) / s;
    // half an ulp of e4m3 at |v| (ulp 2^(e-3), subnormal ulp 2^-9), plus f32 rounding slack
    const e = Math.max(Math.floor(Math.log2(Math.abs(v) || 1)), -6);
    const bound = 2 ** (e - 4) * (1 + 1e-6) + 1e-6 * Math.abs(v);
    worst = Math.max(worst, err / bound);
  }
  expect(worst).toBeLessThanOrEqual(1);
}

describe('quantizeActivation (DeepSeek act_quant, 1x128 tiles)', () => {
  it('is bit-exact against k.act_quant (fp32 scales)', () => {
    const x = f32('k.act_quant.x');
    const r = quantizeActivation(x, [64, 512]);
    expect(r.scaleShape).toEqual([64, 4]);
    expect(mismatches(r.scales, f32('k.act_quant.s'))).toEqual([]);
    expect(mismatches(r.q, u8('k.act_quant.y'))).toEqual([]);
  });

  it('is bit-exact against k.act_quant_ue8m0', () => {
    const x = f32('k.act_quant.x');
    const r = quantizeActivation(x, [64, 512], { scaleFormat: 'ue8m0' });
    expect(mismatches(r.scales, f32('k.act_quant_ue8m0.s'))).toEqual([]);
    expect(mismatches(r.q, u8('k.act_quant_ue8m0.y'))).toEqual([]);
  });

  it('accepts [..., cols] shapes (rows = product of leading dims)', () => {
    const x = f32('k.act_quant.x');
    const r = quantizeActivation(x, [4, 16, 512]);
    expect(r.scaleShape).toEqual([64, 4]);
    expect(mismatches(r.q, u8('k.act_quant.y'))).toEqual([]);
  });

  it('reproduces the gemm goldens operands a / as (and weights b / bs)', () => {
    for (const [m, n, k] of [
      [64, 384, 512],
      [32, 256, 4096],
    ] as const) {
      const key = `k.gemm.${m}x${n}x${k}`;
      const a = quantizeActivation(f32(`${key}.x_f32`), [m, k]);
      expect(mismatches(a.q, u8(`${key}.a`))).toEqual([]);
      expect(mismatches(a.scales, f32(`${key}.as`))).toEqual([]);
      const b = quantizeWeight(f32(`${key}.w_f32`), [n, k]);
      expect(b.scaleShape).toEqual([Math.ceil(n / 128), k / 128]);
      expect(mismatches(b.q, u8(`${key}.b`))).toEqual([]);
      expect(mismatches(b.scales, f32(`${key}.bs`))).toEqual([]);
    }
  });

  it('the worked case of the reference doc', () => {
    const x = new Float32Array(128);
    x[0] = 5;
    x[1] = -0.3;
    x[2] = 1e-3;
    const r = quantizeActivation(x, [1, 128]);
    expect(r.scales[0]).toBeCloseTo(0.01116071455, 11);
    expect(Array.from(r.q.subarray(0, 3), decodeE4M3)).toEqual([448, -26, 0.0859375]);
    expect(Array.from(r.q.subarray(3), decodeE4M3).every((v) => v === 0)).toBe(true);
    const u = quantizeActivation(x, [1, 128], { scaleFormat: 'ue8m0' });
    expect(u.scales[0]).toBe(2 ** -6);
    expect(Array.from(u.q.subarray(0, 3), decodeE4M3)).toEqual([320, -20, 0.0625]);
  });

  it('floors amax at 1e-4 (an all-zero block gets scale f32(1e-4)/448 and zero bytes)', () => {
    const r = quantizeActivation(new Float32Array(256), [2, 128]);
    expect(r.scales[0]).toBe(Math.fround(Math.fround(1e-4) * Math.fround(1 / 448)));
    expect(r.q.every((b) => b === 0)).toBe(true);
    expect(activationScale(0)).toBe(r.scales[0]);
  });

  it('round-trips ragged shapes within half an e4m3 ulp of the block scale', () => {
    for (const [rows, cols, block] of [
      [3, 200, 128],
      [7, 129, 128],
      [1, 1, 128],
      [5, 300, 64],
      [10, 127, 128],
    ] as const) {
      const x = randn(rows * cols, rows * 1000 + cols, 3);
      const r = quantizeActivation(x, [rows, cols], { block });
      const nb = Math.ceil(cols / block);
      expect(r.scaleShape).toEqual([rows, nb]);
      const d = dequantizeActivation(r.q, r.scales, [rows, cols], { block });
      checkRoundTrip(x, d, (i) => r.scales[Math.floor(i / cols) * nb + Math.floor((i % cols) / block)]!);
      // each block uses the full range: its max |q| is 448 (or close, for ue8m0)
      expect(Math.max(...Array.from(r.q, (b) => Math.abs(E4M3_LUT[b]!)))).toBe(448);
    }
  });

  it('ue8m0 scales are powers of two >= the fp32 scale, with |q| <= 448', () => {
    const x = randn(4 * 384, 7, 10);
    const a = quantizeActivation(x, [4, 384]);
    const u = quantizeActivation(x, [4, 384], { scaleFormat: 'ue8m0' });
    for (let i = 0; i < a.scales.length; i++) {
      const s = u.scales[i]!;
      expect(Number.isInteger(Math.log2(s))).toBe(true);
      expect(s).toBeGreaterThanOrEqual(a.scales[i]!);
      expect(s).toBeLessThan(2 * a.scales[i]!);
    }
    const d = dequantizeActivation(u.q, u.scales, [4, 384]);
    checkRoundTrip(x, d, (i) => u.scales[Math.floor(i / 384) * 3 + Math.floor((i % 384) / 128)]!);
  });

  it('ue8m0Ceil is exact at and around powers of two', () => {
    expect(ue8m0Ceil(1)).toBe(1);
    expect(ue8m0Ceil(2 ** -20)).toBe(2 ** -20);
    expect(ue8m0Ceil(Math.fround(1 + 2 ** -23))).toBe(2);
    expect(ue8m0Ceil(Math.fround(2 ** -17 * (1 + 2 ** -23)))).toBe(2 ** -16);
    expect(ue8m0Ceil(0.75)).toBe(1);
    expect(ue8m0Ceil(2 ** -140)).toBe(2 ** -140); // f32 subnormal
  });
});

describe('quantizeWeight (128x128 tiles)', () => {
  it('handles out/in that are not multiples of 128', () => {
    for (const [o, i] of [
      [200, 300],
      [129, 127],
      [1, 513],
      [257, 1],
    ] as const) {
      const w = randn(o * i, o + i, 0.02);
      const r = quantizeWeight(w, [o, i]);
      const cb = Math.ceil(i / 128);
      expect(r.scaleShape).toEqual([Math.ceil(o / 128), cb]);
      // each scale = amax of its block / 448
      for (let bi = 0; bi < Math.ceil(o / 128); bi++) {
        for (let bj = 0; bj < cb; bj++) {
          let amax = 0;
          for (let r0 = bi * 128; r0 < Math.min(o, bi * 128 + 128); r0++) {
            for (let c = bj * 128; c < Math.min(i, bj * 128 + 128); c++)
              amax = Math.max(amax, Math.abs(w[r0 * i + c]!));
          }
          expect(r.scales[bi * cb + bj]).toBe(weightScale(amax));
        }
      }
      const d = dequantizeWeight(r.q, r.scales, [o, i]);
      checkRoundTrip(w, d, (k) => r.scales[Math.floor(Math.floor(k / i) / 128) * cb + Math.floor((k % i) / 128)]!);
    }
  });

  it('supports other block sizes and ue8m0 scales', () => {
    const w = randn(100 * 70, 3);
    const r = quantizeWeight(w, [100, 70], { block: 32, scaleFormat: 'ue8m0' });
    expect(r.scaleShape).toEqual([4, 3]);
    const d = dequantizeWeight(r.q, r.scales, [100, 70], { block: 32 });
    checkRoundTrip(w, d, (k) => r.scales[Math.floor(Math.floor(k / 70) / 32) * 3 + Math.floor((k % 70) / 32)]!);
  });
});

describe('128x1 (columnwise) quantization for backward', () => {
  it('equals rowwise quantization of the transpose', () => {
    const rows = 300;
    const cols = 70;
    const x = randn(rows * cols, 11, 2);
    const c = quantizeActivationColumnwise(x, [rows, cols]);
    expect(c.scaleShape).toEqual([3, cols]);
    const xt = transpose2d(x, rows, cols);
    const r = quantizeActivation(xt, [cols, rows]);
    expect(mismatches(transpose2d(c.q, rows, cols), r.q)).toEqual([]);
    expect(mismatches(transpose2d(c.scales, 3, cols), r.scales)).toEqual([]);
    const t = quantizeActivationTransposed(x, [rows, cols]);
    expect(t.shape).toEqual([cols, rows]);
    expect(t.scaleShape).toEqual([cols, 3]);
    expect(mismatches(t.q, r.q)).toEqual([]);
    expect(mismatches(t.scales, r.scales)).toEqual([]);
    const d = dequantizeActivationColumnwise(c.q, c.scales, [rows, cols]);
    checkRoundTrip(x, d, (i) => c.scales[Math.floor(Math.floor(i / cols) / 128) * cols + (i % cols)]!);
  });

  it('re-quantizes a cached 1x128 FP8 activation into 128x1 tiles', () => {
    const rows = 256;
    const cols = 384;
    const x = randn(rows * cols, 5);
    const row = quantizeActivation(x, [rows, cols]);
    const col = requantizeColumnwise(row.q, row.scales, [rows, cols]);
    expect(col.scaleShape).toEqual([2, cols]);
    const xr = dequantizeActivation(row.q, row.scales, [rows, cols]);
    const xc = dequantizeActivationColumnwise(col.q, col.scales, [rows, cols]);
    checkRoundTrip(xr, xc, (i) => col.scales[Math.floor(Math.floor(i / cols) / 128) * cols + (i % cols)]!);
  });
});

describe('bad input', () => {
  it('throws clear errors', () => {
    const x = new Float32Array(10);
    expect(() => quantizeActivation(x, [3, 4])).toThrow(/holds 12 elements but the array has 10/);
    expect(() => quantizeActivation(x, [])).toThrow(/non-empty/);
    expect(() => quantizeActivation(x, [2, 5], { block: 0 })).toThrow(/block must be a positive integer/);
    expect(() => quantizeActivation(x, [2, 5], { block: 1.5 })).toThrow(/block/);
    expect(() => quantizeActivation(x, [2, 5], { scaleFormat: 'e8m0' as 'ue8m0' })).toThrow(/scaleFormat/);
    expect(() => quantizeActivation(x, [2, 5], { amaxFloor: 0 })).toThrow(/amaxFloor/);
    expect(() => quantizeActivation(new Float64Array(10) as unknown as Float32Array, [10])).toThrow(/Float32Array/);
    expect(() => quantizeWeight(x, [10])).toThrow(/\[out, in\]/);
    expect(() => quantizeWeight(x, [2, -5])).toThrow(/bad dimension/);
    expect(() => dequantizeActivation(new Uint8Array(10), new Float32Array(3), [2, 5])).toThrow(/3 scales, expected 2/);
    expect(() => dequantizeWeight(new Uint8Array(9), new Float32Array(1), [2, 5])).toThrow(/holds 10 elements/);
  });

  it('rejects NaN and Inf inputs, naming the element', () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const x = new Float32Array(300);
      x[257] = bad;
      expect(() => quantizeActivation(x, [2, 150])).toThrow(/non-finite input .* at flat index 257/);
      expect(() => quantizeWeight(x, [2, 150])).toThrow(/non-finite input .* at flat index 257/);
      expect(() => quantizeActivationColumnwise(x, [2, 150])).toThrow(/non-finite input .* at flat index 257/);
    }
  });
});
