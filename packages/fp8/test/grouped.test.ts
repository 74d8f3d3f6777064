// The grouped block-scaled FP8 GEMM (the MoE's routed experts in FP8 over device-side segments) on the
// CPU and on WebGPU (lavapipe without a GPU) against a float64 product of the dequantized operands:
// ragged K and N blocks, word and byte loads, segments that cross row tiles, empty experts, the stack
// cache (reused, rebuilt when the weights change), and its errors.
import { afterAll, describe, expect, it } from 'vitest';
import { fromRaw, tensor, type Backend, type Tensor } from '@dsv3/core';
import { relativeError } from '@dsv3/core/testing';
import {
  E4M3_LUT,
  fp8GroupedGemmBlockScaledT,
  newDeviceStackCache,
  quantizeActivationT,
  quantizeWeightT,
  type QuantizedTensor,
} from '../src/index';
import { acquireGpu, on } from './webgpu-helpers';

const gpu = await acquireGpu();
afterAll(() => gpu?.dispose());

function rand(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 4;
  }
  return out;
}

/** decode(q) * scale of its tile, in float64: rows of `group` share a scale row (1: activations). */
function dequant64(q: Tensor, s: Tensor, group: number, block = 128): Float64Array {
  const [rows, cols] = q.shape as [number, number];
  const bytes = q.rawSync() as Uint8Array;
  const sc = s.rawSync() as Float32Array;
  const kb = s.shape[1]!;
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++)
      out[r * cols + c] = E4M3_LUT[bytes[r * cols + c]!]! * sc[Math.floor(r / group) * kb + Math.floor(c / block)]!;
  return out;
}

interface Case {
  N: number;
  K: number;
  O: number;
  offsets: number[];
}

function operands({ N, K, O, offsets }: Case, seed: number) {
  const E = offsets.length - 1;
  const x = quantizeActivationT(fromRaw('f32', [N, K], rand(N * K, seed)));
  const ws = Array.from({ length: E }, (_, e) => quantizeWeightT(fromRaw('f32', [O, K], rand(O * K, seed + 1 + e))));
  return { x, ws };
}

/** y[r] = a64[r] · w64_e[:]ᵀ for the rows of each segment, in float64. */
function reference({ N, K, O, offsets }: Case, x: QuantizedTensor, ws: QuantizedTensor[]): Float64Array {
  const a = dequant64(x.q, x.scales, 1);
  const y = new Float64Array(N * O);
  ws.forEach((w, e) => {
    const b = dequant64(w.q, w.scales, 128);
    for (let r = offsets[e]!; r < offsets[e + 1]!; r++)
      for (let o = 0; o < O; o++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += a[r * K + k]! * b[o * K + k]!;
        y[r * O + o] = s;
      }
  });
  return y;
}

const CASES: [string, Case][] = [
  [
    'ragged K (200: words) and N, an empty expert, a segment over two row tiles',
    { N: 90, K: 200, O: 150, offsets: [0, 3, 3, 70, 71, 90] },
  ],
  ['K % 4 != 0 (byte loads), first and last experts empty', { N: 33, K: 130, O: 40, offsets: [0, 0, 20, 33, 33] }],
  ['one row (decode)', { N: 4, K: 256, O: 64, offsets: [0, 1, 1, 2, 3, 3, 3, 4] }],
];

const offsetsT = (offs: number[], be?: Backend): Tensor => tensor(Int32Array.from(offs), { dtype: 'i32', backend: be });
const onBe = (t: QuantizedTensor, be: Backend): QuantizedTensor => ({ q: on(t.q, be), scales: on(t.scales, be) });

describe('fp8GroupedGemmBlockScaledT', () => {
  for (const [name, c] of CASES) {
    it(`CPU: ${name} (float64 reference)`, () => {
      const { x, ws } = operands(c, c.N);
      const want = reference(c, x, ws);
      const fast = fp8GroupedGemmBlockScaledT(x.q, x.scales, offsetsT(c.offsets), ws);
      const exact = fp8GroupedGemmBlockScaledT(x.q, x.scales, offsetsT(c.offsets), ws, { exact: true });
      expect(fast.shape).toEqual([c.N, c.O]);
      expect(relativeError(fast.dataSync(), want)).toBeLessThanOrEqual(1e-6);
      expect(relativeError(exact.dataSync(), want)).toBeLessThanOrEqual(1e-7);
    });

    it(`WebGPU: ${name} (float64 reference)`, async (ctx) => {
      if (!gpu) return ctx.skip();
      const { x, ws } = operands(c, c.N);
      const want = reference(c, x, ws);
      const y = fp8GroupedGemmBlockScaledT(
        on(x.q, gpu),
        on(x.scales, gpu),
        offsetsT(c.offsets, gpu),
        ws.map((w) => onBe(w, gpu)),
      );
      expect(relativeError((await y.data()) as Float32Array, want)).toBeLessThanOrEqual(1e-6);
    });
  }

  it('WebGPU: the cached stacks are reused, and rebuilt when the weights change', async (ctx) => {
    if (!gpu) return ctx.skip();
    const c = CASES[0]![1];
    const { x, ws } = operands(c, 7);
    const cache = { q: newDeviceStackCache(), scales: newDeviceStackCache() };
    const gws = ws.map((w) => onBe(w, gpu));
    const run = async (weights: QuantizedTensor[]) =>
      (await fp8GroupedGemmBlockScaledT(on(x.q, gpu), on(x.scales, gpu), offsetsT(c.offsets, gpu), weights, {
        cache,
      }).data()) as Float32Array;
    const first = await run(gws);
    const stacked = cache.q.stacked;
    expect(Array.from(await run(gws))).toEqual(Array.from(first));
    expect(cache.q.stacked).toBe(stacked);
    const swapped = [...gws].reverse();
    const y = await run(swapped);
    expect(cache.q.stacked).not.toBe(stacked);
    expect(relativeError(y, reference(c, x, [...ws].reverse()))).toBeLessThanOrEqual(1e-6);
  });

  it('bad operands are refused with what was expected', () => {
    const c = CASES[1]![1];
    const { x, ws } = operands(c, 3);
    expect(() => fp8GroupedGemmBlockScaledT(x.q, x.scales, offsetsT([0, 33]), ws)).toThrow(
      /offsets must be an i32 tensor \[5\]/,
    );
    const wrong = quantizeWeightT(fromRaw('f32', [c.O, 64], rand(c.O * 64, 1)));
    expect(() => fp8GroupedGemmBlockScaledT(x.q, x.scales, offsetsT(c.offsets), [...ws.slice(0, 3), wrong])).toThrow(
      /weight of expert 3 is \[40, 64\], expected \[40, 130\]/,
    );
    expect(() => fp8GroupedGemmBlockScaledT(x.q, x.scales, offsetsT(c.offsets), [])).toThrow(/no expert weights/);
  });
});
