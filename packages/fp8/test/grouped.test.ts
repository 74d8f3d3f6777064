// The grouped block-scaled FP8 GEMM (the MoE's routed experts in FP8 over device-side segments) on the
// CPU and on WebGPU (lavapipe without a GPU) against a float64 product of the dequantized operands:
// ragged K and N blocks, word and byte loads, segments that cross row tiles, empty experts, the stack
// cache (reused, rebuilt when the weights change), and its errors.
import { afterAll, describe, expect, it } from 'vitest';
import { fromRaw, tensor, type Backend, type Tensor } from '@dsv3/core';
import { expectSameBits, relativeError } from '@dsv3/core/testing';
import {
  E4M3_LUT,
  fp8GroupedGemmBlockScaledT,
  fp8GroupedWgradT,
  groupedQuantizeActivationTransposedT,
  quantizeActivationTransposedT,
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
    expectSameBits(await run(gws), first, 'reused stacks');
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

describe('grouped 128x1 quantization and the FP8 weight gradient over expert segments', () => {
  // 300 rows: segments of 0, 130 (a ragged second tile), 1, 0, 169 rows; a start off the tile grid
  const offsets = [0, 0, 130, 131, 131, 300];
  const [R, O, K] = [300, 24, 40];
  const g = fromRaw('f32', [R, O], rand(R * O, 41));
  const x = fromRaw('f32', [R, K], rand(R * K, 42));
  const E = offsets.length - 1;

  it('CPU: each segment is quantizeActivationTransposedT of its own rows, its scales at floor(start/128) + e', () => {
    const { q, scales } = groupedQuantizeActivationTransposedT(g, offsetsT(offsets));
    expect(q.shape).toEqual([O, R]);
    expect(scales.shape).toEqual([O, Math.ceil(R / 128) + E]);
    const qb = q.rawSync() as Uint8Array;
    const sb = scales.rawSync() as Float32Array;
    for (let e = 0; e < E; e++) {
      const [a, b] = [offsets[e]!, offsets[e + 1]!];
      if (a === b) continue;
      const seg = fromRaw('f32', [b - a, O], (g.rawSync() as Float32Array).slice(a * O, b * O));
      const want = quantizeActivationTransposedT(seg);
      const nb = want.scales.shape[1]!;
      const wq = want.q.rawSync() as Uint8Array;
      const ws = want.scales.rawSync() as Float32Array;
      for (let c = 0; c < O; c++) {
        expect(Array.from(qb.subarray(c * R + a, c * R + b))).toEqual(
          Array.from(wq.subarray(c * (b - a), (c + 1) * (b - a))),
        );
        const s0 = Math.floor(a / 128) + e;
        expect(Array.from(sb.subarray(c * scales.shape[1]! + s0, c * scales.shape[1]! + s0 + nb))).toEqual(
          Array.from(ws.subarray(c * nb, (c + 1) * nb)),
        );
      }
    }
  });

  /** dW_e = Σ over segment e's tiles of dequantized gᵀ x, in float64. */
  function wgradReference(gq: QuantizedTensor, xq: QuantizedTensor): Float64Array[] {
    const nb = gq.scales.shape[1]!;
    const dec = (t: QuantizedTensor, rows: number): Float64Array => {
      const bytes = t.q.rawSync() as Uint8Array;
      const sc = t.scales.rawSync() as Float32Array;
      const out = new Float64Array(rows * R);
      for (let e = 0; e < E; e++)
        for (let i = offsets[e]!; i < offsets[e + 1]!; i++) {
          const slot = Math.floor(offsets[e]! / 128) + e + Math.floor((i - offsets[e]!) / 128);
          for (let r = 0; r < rows; r++) out[r * R + i] = E4M3_LUT[bytes[r * R + i]!]! * sc[r * nb + slot]!;
        }
      return out;
    };
    const gd = dec(gq, O);
    const xd = dec(xq, K);
    return Array.from({ length: E }, (_, e) => {
      const dw = new Float64Array(O * K);
      for (let o = 0; o < O; o++)
        for (let k = 0; k < K; k++) {
          let s = 0;
          for (let i = offsets[e]!; i < offsets[e + 1]!; i++) s += gd[o * R + i]! * xd[k * R + i]!;
          dw[o * K + k] = s;
        }
      return dw;
    });
  }

  for (const where of ['cpu', 'webgpu'] as const) {
    it(`${where}: weight gradients of every expert match float64 (rel ≤ 1e-6), zeros for empty segments; quantization bit-exact with the CPU`, async (ctx) => {
      if (where === 'webgpu' && !gpu) return ctx.skip();
      const be = where === 'webgpu' ? gpu! : undefined;
      const on2 = (t: Tensor): Tensor => (be ? on(t, be) : t);
      const offs = offsetsT(offsets, be);
      const gq = groupedQuantizeActivationTransposedT(on2(g), offs);
      const xq = groupedQuantizeActivationTransposedT(on2(x), offs);
      const cpuG = groupedQuantizeActivationTransposedT(g, offsetsT(offsets));
      expectSameBits((await gq.q.data()) as Uint8Array, cpuG.q.rawSync() as Uint8Array, 'gpu q codes');
      expect(Array.from((await gq.scales.data()) as Float32Array)).toEqual(
        Array.from(cpuG.scales.rawSync() as Float32Array),
      );
      const dws = fp8GroupedWgradT(gq, xq, offs, [0, 1, 2, 3, 4]);
      const want = wgradReference(cpuG, groupedQuantizeActivationTransposedT(x, offsetsT(offsets)));
      for (let e = 0; e < E; e++) {
        const got = (await dws[e]!.data()) as Float32Array;
        expect(dws[e]!.shape).toEqual([O, K]);
        if (offsets[e] === offsets[e + 1]) expect(got.every((v) => v === 0)).toBe(true);
        else expect(relativeError(got, want[e]!)).toBeLessThanOrEqual(1e-6);
      }
    });
  }

  it('bad operands are refused with what was expected', () => {
    const gq = groupedQuantizeActivationTransposedT(g, offsetsT(offsets));
    expect(() => fp8GroupedWgradT(gq, gq, offsetsT(offsets), [5])).toThrow(/expert 5 is not in \[0, 5\)/);
    expect(() => fp8GroupedWgradT(gq, gq, offsetsT([0, 300]), [0])).toThrow(
      /gT.scales are \[24, 8\], expected \[24, 4\]/,
    );
  });
});
