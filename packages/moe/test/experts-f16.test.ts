// Routed experts in the f16 compute mode: f16 expert weights in the grouped GEMM (f32 activations, f32
// accumulation) on the CPU (core's matmul decodes the weight) and on WebGPU (lavapipe without a GPU),
// with native f16 loads where the device has shader-f16 and bit-decoded loads with the feature
// withheld, against float64 over the f16 values of the weights; and a MoE layer whose experts are f16.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webGpuForTests } from '@dsv3/core/node';
import { cast, fromRaw, mul, noGrad, sum, tensor, type Backend, type Tensor } from '@dsv3/core';
import { groupedLinear, MoE } from '../src/index';
import { moeConfig, randValues, relErr } from './layer-helpers';

type TestGpu = Backend & { dispose(): void; readbacks: number; features: { shaderF16: boolean } };
let gpu: TestGpu | null = null;
let plain: TestGpu | null = null;
beforeAll(async () => {
  gpu = (await webGpuForTests('moe f16')) as TestGpu | null;
  // the same adapter without shader-f16: the bit-decoded f16 loads
  if (gpu) plain = (await webGpuForTests('moe f16', { withholdFeatures: ['shader-f16'] })) as TestGpu | null;
});
afterAll(() => {
  gpu?.dispose();
  plain?.dispose();
});

const toBe = (t: Tensor, be: Backend): Tensor => fromRaw(t.dtype, t.shape, t.rawSync(), be);

/** f16 bits of v (round to nearest even) decoded back, in float64: what an f16 weight holds. */
const f16Values = (v: Float64Array): Float64Array =>
  Float64Array.from(cast(tensor(v, { shape: [v.length], dtype: 'f32' }), 'f16').dataSync());

describe('grouped GEMM with f16 expert weights', () => {
  // ragged K and O, an empty expert, a segment over two 64-row tiles, an empty last expert
  const [N, K, O] = [90, 37, 70];
  const offsets = [0, 5, 5, 80, 90, 90];
  const E = offsets.length - 1;
  const xv = randValues(N * K, 1);
  const wv = Array.from({ length: E }, (_, e) => randValues(O * K, 20 + e));
  const gv = randValues(N * O, 98);
  /** y = x · w_eᵀ per segment and dx = g · w_e, in float64 over the f16 values of the weights. */
  const reference = () => {
    const w64 = wv.map(f16Values);
    const y = new Float64Array(N * O);
    const dx = new Float64Array(N * K);
    for (let e = 0; e < E; e++)
      for (let r = offsets[e]!; r < offsets[e + 1]!; r++)
        for (let o = 0; o < O; o++) {
          let s = 0;
          for (let k = 0; k < K; k++) {
            s += xv[r * K + k]! * w64[e]![o * K + k]!;
            dx[r * K + k] = dx[r * K + k]! + gv[r * O + o]! * w64[e]![o * K + k]!;
          }
          y[r * O + o] = s;
        }
    return { y, dx };
  };
  const want = reference();

  const cases = [
    ['cpu', () => undefined],
    ['webgpu (shader-f16 where offered)', () => gpu],
    ['webgpu without shader-f16', () => plain],
  ] as const;
  for (const [where, backend] of cases) {
    it(`${where}: forward and dx match float64 (rel ≤ 1e-6), weights stay f16`, async (ctx) => {
      const be = backend();
      if (be === null) return ctx.skip();
      if (where === 'webgpu without shader-f16') expect(plain!.features.shaderF16).toBe(false);
      if (be && where !== 'webgpu without shader-f16')
        console.log(`grouped f16: shader-f16 ${gpu!.features.shaderF16}`);
      const on = (t: Tensor): Tensor => (be ? toBe(t, be) : t);
      const x = on(tensor(xv, { shape: [N, K], dtype: 'f32' })).requireGrad();
      const ws = wv.map((v) => on(cast(tensor(v, { shape: [O, K], dtype: 'f32' }), 'f16')));
      const offs = on(tensor(Int32Array.from(offsets), { dtype: 'i32' }));
      const y = groupedLinear(x, ws, offs);
      sum(mul(y, on(tensor(gv, { shape: [N, O], dtype: 'f32' })))).backward();
      expect(ws.every((w) => w.dtype === 'f16')).toBe(true);
      expect(relErr(await y.data(), want.y)).toBeLessThanOrEqual(1e-6);
      expect(relErr(await x.grad!.data(), want.dx)).toBeLessThanOrEqual(1e-6);
    });
  }
});

describe('MoE layer with f16 routed experts on WebGPU', () => {
  const cfg = moeConfig({ hiddenSize: 48, moeIntermediateSize: 40, nSharedExperts: 1 });
  const T = 21;
  const xv = randValues(T * cfg.hiddenSize, 7);

  it('matches the CPU layer over the same f16-rounded weights, with no read-back in the forward', async (ctx) => {
    if (!gpu) return ctx.skip();
    const ref = new MoE(cfg, { seed: 4 });
    const dev = new MoE(cfg, { seed: 4, backend: gpu });
    // both layers hold the f16 values of the routed experts' weights; the GPU keeps them f16
    const devParams = new Map(dev.namedParameters());
    for (const [name, p] of ref.namedParameters()) {
      if (!name.startsWith('experts.')) continue;
      const h = noGrad(() => cast(p.value, 'f16'));
      p.value = noGrad(() => cast(h, 'f32'));
      devParams.get(name)!.value = toBe(h, gpu);
    }
    expect(devParams.get('experts.0.gate_proj.weight')!.value.dtype).toBe('f16');
    const x = tensor(xv, { shape: [T, cfg.hiddenSize], dtype: 'f32' });
    const want = noGrad(() => ref.forward(x)).dataSync();
    const before = gpu.readbacks;
    const y = noGrad(() => dev.forward(toBe(x, gpu!)));
    expect(gpu.readbacks).toBe(before);
    const err = relErr(await y.data(), want);
    console.log(`MoE f16 experts, webgpu vs cpu: rel ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-5);
  });
});
