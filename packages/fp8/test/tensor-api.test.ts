// The Tensor-level API on the CPU backend: kernels registered in core's registry, results identical
// to the typed-array layer (and so to the goldens), the fast sgemm GEMM path within 1e-6 of exact,
// shapes, the 'row' bScale layout, ragged K, and clear errors for bad input.
import { relativeError } from '@dsv3/core/testing';
import { describe, expect, it } from 'vitest';
import { fromRaw, hasKernel, randn, tensor, type Tensor } from '@dsv3/core';
import {
  E4M3_LUT,
  FP8_OPS,
  dequantizeActivation,
  dequantizeActivationT,
  dequantizeWeight,
  dequantizeWeightT,
  fp8GemmBlockScaled,
  fp8GemmBlockScaledT,
  quantizeActivation,
  quantizeActivationT,
  quantizeActivationTransposed,
  quantizeActivationTransposedT,
  quantizeWeightT,
  transpose2d,
} from '../src/index';
import { f32, mismatches, u8 } from './goldens';

const f32T = (shape: number[], data: Float32Array): Tensor => fromRaw('f32', shape, data);
const e4m3T = (shape: number[], data: Uint8Array): Tensor => fromRaw('fp8-e4m3', shape, data);
const bytes = (t: Tensor): Uint8Array => t.rawSync() as Uint8Array;
const floats = (t: Tensor): Float32Array => t.rawSync() as Float32Array;

/** f64 reference of dequant(a) · dequant(b)^T with arbitrary per-element scale lookups. */
function refGemm(
  a: Uint8Array,
  sa: (i: number, k: number) => number,
  b: Uint8Array,
  sb: (j: number, k: number) => number,
  m: number,
  n: number,
  k: number,
): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += E4M3_LUT[a[i * k + t]!]! * sa(i, t) * E4M3_LUT[b[j * k + t]!]! * sb(j, t);
      c[i * n + j] = s;
    }
  }
  return c;
}

describe('kernel registry', () => {
  it('registers every FP8 op for cpu and webgpu', () => {
    for (const op of Object.values(FP8_OPS)) {
      expect(hasKernel(op, 'cpu'), op).toBe(true);
      expect(hasKernel(op, 'webgpu'), op).toBe(true);
    }
  });
});

describe('quantizers on Tensors (CPU)', () => {
  it('quantizeActivationT reproduces k.act_quant bit-exactly (fp32 and ue8m0 scales)', () => {
    const x = f32T([64, 512], f32('k.act_quant.x'));
    const r = quantizeActivationT(x);
    expect(r.q.dtype).toBe('fp8-e4m3');
    expect([...r.q.shape]).toEqual([64, 512]);
    expect([...r.scales.shape]).toEqual([64, 4]);
    expect(mismatches(bytes(r.q), u8('k.act_quant.y'))).toEqual([]);
    expect(mismatches(floats(r.scales), f32('k.act_quant.s'))).toEqual([]);
    const u = quantizeActivationT(x, { scaleFormat: 'ue8m0' });
    expect(mismatches(bytes(u.q), u8('k.act_quant_ue8m0.y'))).toEqual([]);
    expect(mismatches(floats(u.scales), f32('k.act_quant_ue8m0.s'))).toEqual([]);
  });

  it('keeps leading dimensions: x [2, 3, 300] → scales [2, 3, 3]', () => {
    const x = randn([2, 3, 300], { seed: 3 });
    const r = quantizeActivationT(x);
    expect([...r.q.shape]).toEqual([2, 3, 300]);
    expect([...r.scales.shape]).toEqual([2, 3, 3]);
    const ref = quantizeActivation(floats(x), [2, 3, 300]);
    expect(mismatches(bytes(r.q), ref.q)).toEqual([]);
    expect(mismatches(floats(r.scales), ref.scales)).toEqual([]);
    const d = dequantizeActivationT(r.q, r.scales);
    expect(mismatches(floats(d), dequantizeActivation(ref.q, ref.scales, [6, 300]))).toEqual([]);
  });

  it('casts f64 / bf16 input to f32 first', () => {
    const x64 = tensor(
      Float64Array.from({ length: 256 }, (_, i) => Math.sin(i) * 3),
      { shape: [2, 128], dtype: 'f64' },
    );
    const ref = quantizeActivation(Float32Array.from(x64.dataSync()), [2, 128]);
    expect(mismatches(bytes(quantizeActivationT(x64).q), ref.q)).toEqual([]);
  });

  it('quantizeWeightT reproduces the golden weight operands (b, bs) of k.gemm', () => {
    const w = f32T([384, 512], f32('k.gemm.64x384x512.w_f32'));
    const r = quantizeWeightT(w);
    expect([...r.scales.shape]).toEqual([3, 4]);
    expect(mismatches(bytes(r.q), u8('k.gemm.64x384x512.b'))).toEqual([]);
    expect(mismatches(floats(r.scales), f32('k.gemm.64x384x512.bs'))).toEqual([]);
    const d = dequantizeWeightT(r.q, r.scales);
    expect(mismatches(floats(d), dequantizeWeight(bytes(r.q), floats(r.scales), [384, 512]))).toEqual([]);
  });

  it('quantizeActivationTransposedT = 128x1 tiles, transposed; equals quantizeActivationT of x^T', () => {
    const x = randn([300, 200], { seed: 5 });
    const r = quantizeActivationTransposedT(x);
    expect([...r.q.shape]).toEqual([200, 300]);
    expect([...r.scales.shape]).toEqual([200, 3]);
    const ref = quantizeActivationTransposed(floats(x), [300, 200]);
    expect(mismatches(bytes(r.q), ref.q)).toEqual([]);
    const viaT = quantizeActivation(transpose2d(floats(x), 300, 200), [200, 300]);
    expect(mismatches(bytes(r.q), viaT.q)).toEqual([]);
    expect(mismatches(floats(r.scales), viaT.scales)).toEqual([]);
  });

  it('outputs carry no autograd history', () => {
    const x = randn([4, 128], { seed: 1 }).requireGrad();
    const r = quantizeActivationT(x);
    expect(r.q.requiresGrad).toBe(false);
    expect(r.scales.gradFn).toBeNull();
  });
});

describe.each([
  [64, 384, 512],
  [32, 256, 4096],
] as const)('fp8GemmBlockScaledT on k.gemm.%ix%ix%i (CPU)', (m, n, k) => {
  const key = `k.gemm.${m}x${n}x${k}`;
  const ops = () =>
    [
      e4m3T([m, k], u8(`${key}.a`)),
      f32T([m, k / 128], f32(`${key}.as`)),
      e4m3T([n, k], u8(`${key}.b`)),
      f32T([n / 128, k / 128], f32(`${key}.bs`)),
    ] as const;

  it('fast path (scales folded per block, core sgemm): relative L2 <= 1e-6 vs exact', () => {
    const c = fp8GemmBlockScaledT(...ops());
    expect(c.dtype).toBe('f32');
    expect([...c.shape]).toEqual([m, n]);
    expect(relativeError(floats(c), f32(`${key}.exact`))).toBeLessThanOrEqual(1e-6);
  });

  it('exact path (f64 per-block sums): relative L2 <= 1e-7 vs exact', () => {
    const c = fp8GemmBlockScaledT(...ops(), { exact: true });
    expect(relativeError(floats(c), f32(`${key}.exact`))).toBeLessThanOrEqual(1e-7);
  });

  it('flattens leading dimensions of a: [2, M/2, K] → [2, M/2, N]', () => {
    const [a, as, b, bs] = ops();
    const a3 = fromRaw('fp8-e4m3', [2, m / 2, k], bytes(a));
    const as3 = fromRaw('f32', [2, m / 2, k / 128], floats(as));
    const c = fp8GemmBlockScaledT(a3, as3, b, bs);
    expect([...c.shape]).toEqual([2, m / 2, n]);
    expect(relativeError(floats(c), f32(`${key}.exact`))).toBeLessThanOrEqual(1e-6);
  });
});

describe('fp8GemmBlockScaledT: row-scaled b, ragged K', () => {
  it("bScaleLayout 'row' (1x128 tiles on both operands, the Wgrad GEMM) matches the f64 reference", () => {
    const [m, n, k] = [40, 70, 300];
    const a = quantizeActivationT(randn([m, k], { seed: 11 }));
    const b = quantizeActivationT(randn([n, k], { seed: 12, std: 0.3 }));
    const kb = Math.ceil(k / 128);
    const sa = floats(a.scales);
    const sb = floats(b.scales);
    const ref = refGemm(
      bytes(a.q),
      (i, t) => sa[i * kb + ((t / 128) | 0)]!,
      bytes(b.q),
      (j, t) => sb[j * kb + ((t / 128) | 0)]!,
      m,
      n,
      k,
    );
    for (const exact of [false, true]) {
      const c = fp8GemmBlockScaledT(a.q, a.scales, b.q, b.scales, { bScaleLayout: 'row', exact });
      expect(relativeError(floats(c), ref)).toBeLessThanOrEqual(1e-6);
    }
  });

  it('K = 200 and N = 130 (ragged last blocks): fast and exact paths agree with the reference', () => {
    const [m, n, k] = [17, 130, 200];
    const a = quantizeActivationT(randn([m, k], { seed: 21 }));
    const w = quantizeWeightT(randn([n, k], { seed: 22 }));
    const kb = 2;
    const sa = floats(a.scales);
    const sw = floats(w.scales);
    const ref = refGemm(
      bytes(a.q),
      (i, t) => sa[i * kb + ((t / 128) | 0)]!,
      bytes(w.q),
      (j, t) => sw[((j / 128) | 0) * kb + ((t / 128) | 0)]!,
      m,
      n,
      k,
    );
    for (const exact of [false, true]) {
      expect(
        relativeError(floats(fp8GemmBlockScaledT(a.q, a.scales, w.q, w.scales, { exact })), ref),
      ).toBeLessThanOrEqual(1e-6);
    }
  });
});

describe('bad input (CPU)', () => {
  const a = quantizeActivationT(randn([8, 256], { seed: 1 }));
  const w = quantizeWeightT(randn([64, 256], { seed: 2 }));

  it('mismatched K', () => {
    const w2 = quantizeWeightT(randn([64, 128], { seed: 3 }));
    expect(() => fp8GemmBlockScaledT(a.q, a.scales, w2.q, w2.scales)).toThrow(
      /inner dimensions differ: a \[8, 256\] has K = 256, b \[64, 128\] has K = 128/,
    );
  });

  it('mismatched scale shapes name the expected shape', () => {
    expect(() => fp8GemmBlockScaledT(a.q, w.scales, w.q, w.scales)).toThrow(
      /aScale has shape \[1, 2\], expected \[8, 2\]/,
    );
    expect(() => fp8GemmBlockScaledT(a.q, a.scales, w.q, a.scales)).toThrow(
      /bScale has shape \[8, 2\], expected \[1, 2\]/,
    );
    expect(() => fp8GemmBlockScaledT(a.q, a.scales, w.q, w.scales, { bScaleLayout: 'row' })).toThrow(
      /expected \[64, 2\] \(\[N, ceil\(K\/128\)\], bScaleLayout 'row'\)/,
    );
    expect(() => dequantizeActivationT(a.q, w.scales)).toThrow(/scales have shape \[1, 2\], expected \[8, 2\]/);
    expect(() => dequantizeWeightT(w.q, a.scales)).toThrow(/expected \[1, 2\]/);
  });

  it('wrong dtypes', () => {
    const x = randn([8, 256], { seed: 1 });
    expect(() => fp8GemmBlockScaledT(x, a.scales, w.q, w.scales)).toThrow(
      /a must be an fp8-e4m3 \(or fp8-e5m2\) tensor, got f32/,
    );
    expect(() => fp8GemmBlockScaledT(a.q, a.q, w.q, w.scales)).toThrow(/aScale must be an f32 tensor, got fp8-e4m3/);
    expect(() => quantizeActivationT(tensor(new Int32Array(4), { shape: [2, 2] }))).toThrow(/expected a float tensor/);
    expect(() => quantizeWeightT(randn([2, 2, 2], { seed: 1 }))).toThrow(/must be 2-D/);
    expect(() => quantizeActivationT(randn([2, 8], { seed: 1 }), { block: 0 })).toThrow(
      /block must be a positive integer/,
    );
  });

  it('NaN / Infinity inputs throw a RangeError naming the element', () => {
    const x = new Float32Array(2 * 256).fill(0.5);
    x[300] = NaN;
    expect(() => quantizeActivationT(f32T([2, 256], x))).toThrow(
      /quantizeActivation: non-finite input NaN at flat index 300/,
    );
    x[300] = Infinity;
    expect(() => quantizeActivationTransposedT(f32T([2, 256], x))).toThrow(
      /non-finite input Infinity at flat index 300/,
    );
    x[300] = -Infinity;
    expect(() => quantizeWeightT(f32T([2, 256], x))).toThrow(/quantizeWeight: non-finite input -Infinity/);
  });

  it('non-finite scales in the GEMM throw', () => {
    const bad = floats(a.scales).slice();
    bad[3] = NaN;
    expect(() => fp8GemmBlockScaledT(a.q, f32T([8, 2], bad), w.q, w.scales)).toThrow(/aScale\[3\] = NaN is not finite/);
  });
});

describe('typed-array GEMM: bScaleLayout row', () => {
  it('validates the row layout scale count', () => {
    const q = quantizeActivation(new Float32Array(4 * 128).fill(1), [4, 128]);
    expect(() =>
      fp8GemmBlockScaled(q.q, q.scales, q.q, new Float32Array(1), 4, 4, 128, { bScaleLayout: 'row' }),
    ).toThrow(/expected \[N, ceil\(K\/128\)\] = \[4, 1\] = 4/);
  });
});
