// The MoE layer on WebGPU (Dawn through the optional `webgpu` package; lavapipe without a GPU) against
// the CPU. Without a usable adapter the suite is skipped with a visible warning, unless
// DSV3_REQUIRE_WEBGPU=1, which turns that into a failure.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webGpuForTests } from '@dsv3/core/node';
import { fromRaw, mul, sum, tensor, type Backend, type Tensor } from '@dsv3/core';
import { groupedLinear, MoE, sequenceBalanceLossT, type MoEConfig } from '../src/index';
import { moeConfig, randValues, relErr } from './layer-helpers';

let gpu: (Backend & { dispose(): void }) | null = null;
beforeAll(async () => {
  gpu = await webGpuForTests('moe');
});
afterAll(() => {
  gpu?.dispose();
});

const toGpu = (t: Tensor): Tensor => fromRaw(t.dtype, t.shape, t.rawSync(), gpu!);

const cfg = (over: Partial<MoEConfig>): MoEConfig =>
  moeConfig({ hiddenSize: 40, moeIntermediateSize: 20, nRoutedExperts: 16, numExpertsPerTok: 4, ...over });

describe('MoE on WebGPU vs the CPU', () => {
  it('grouped GEMM kernels (WGSL) match the CPU: forward, dx, dW, ragged sizes and an empty segment', async (ctx) => {
    if (!gpu) return ctx.skip();
    const N = 77;
    const K = 37;
    const O = 70;
    const offsets = [0, 5, 5, 60, 77];
    const xv = randValues(N * K, 1);
    const wv = [0, 1, 2, 3].map((e) => randValues(O * K, 10 + e));
    const gv = randValues(N * O, 99);
    const run = async (be: 'cpu' | 'gpu') => {
      const mk = (v: Float64Array, shape: number[]): Tensor => {
        const t = tensor(v, { shape, dtype: 'f32' });
        return (be === 'gpu' ? toGpu(t) : t).requireGrad();
      };
      const x = mk(xv, [N, K]);
      const ws = wv.map((v) => mk(v, [O, K]));
      const y = groupedLinear(x, ws, offsets, { impl: 'fused' });
      sum(mul(y, mk(gv, [N, O]).detach())).backward();
      return {
        y: await y.data(),
        dx: await x.grad!.data(),
        dw: await Promise.all(ws.map(async (w) => (w.grad ? await w.grad.data() : null))),
      };
    };
    const c = await run('cpu');
    const g = await run('gpu');
    expect(relErr(g.y, c.y)).toBeLessThan(1e-6);
    expect(relErr(g.dx, c.dx)).toBeLessThan(1e-6);
    expect(g.dw[1]).toBeNull();
    for (const e of [0, 2, 3]) expect(relErr(g.dw[e]!, c.dw[e]!)).toBeLessThan(1e-6);
  });

  for (const impl of ['fused', 'composed'] as const) {
    it(`forwardAsync equals the CPU forward (${impl}), several shapes`, async (ctx) => {
      if (!gpu) return ctx.skip();
      for (const [T, over] of [
        [1, { nSharedExperts: 0 }],
        [29, {}],
        [64, { nRoutedExperts: 32, nGroup: 8, topkGroup: 3, numExpertsPerTok: 6 }],
      ] as [number, Partial<MoEConfig>][]) {
        const c = cfg(over);
        const mc = new MoE(c, { seed: 5 });
        const mg = new MoE(c, { seed: 5, backend: gpu, impl });
        const bias = Float32Array.from(randValues(c.nRoutedExperts, 3, 0.05));
        mc.gate.setBias(bias);
        mg.gate.setBias(bias);
        const x = tensor(randValues(T * c.hiddenSize, 8 + T), { shape: [T, c.hiddenSize], dtype: 'f32' });
        const rc = mc.forwardWithRouting(x);
        const rg = await mg.forwardWithRoutingAsync(toGpu(x));
        expect(Array.from(rg.routing.indicesHost)).toEqual(Array.from(rc.routing.indicesHost));
        expect(relErr(await rg.output.data(), rc.output.dataSync())).toBeLessThanOrEqual(1e-5);
      }
    });
  }

  it('forward() on WebGPU points to forwardAsync()', async (ctx) => {
    if (!gpu) return ctx.skip();
    const m = new MoE(cfg({}), { backend: gpu });
    const x = toGpu(tensor(new Float32Array(2 * 40), { shape: [2, 40] }));
    expect(() => m.forward(x)).toThrow(
      /webgpu backend cannot read the routing indices back synchronously; use await moe\.forwardAsync\(x\)/,
    );
    expect(() => m.gate.forward(x)).toThrow(/use await gate\.forwardAsync\(x\)/);
  });

  it('gradients on WebGPU match the CPU (input, experts, shared expert, gate weight); balance loss and bias update', async (ctx) => {
    if (!gpu) return ctx.skip();
    const c = cfg({});
    const mc = new MoE(c, { seed: 9 });
    const mg = new MoE(c, { seed: 9, backend: gpu });
    const T = 24;
    const xv = tensor(randValues(T * 40, 4), { shape: [T, 40], dtype: 'f32' });
    const R = tensor(randValues(T * 40, 5), { shape: [T, 40], dtype: 'f32' });
    const xc = xv.detach().requireGrad();
    const xg = toGpu(xv).requireGrad();
    const oc = mc.forwardWithRouting(xc);
    const og = await mg.forwardWithRoutingAsync(xg);
    const lc = sum(mul(oc.output, R)).add(
      sequenceBalanceLossT(oc.routing.scores, oc.routing.indices, { alpha: 0.01, seqLen: 8 }),
    );
    const lg = sum(mul(og.output, toGpu(R))).add(
      sequenceBalanceLossT(og.routing.scores, og.routing.indices, { alpha: 0.01, seqLen: 8 }),
    );
    expect(relErr([await lg.item()], [lc.dataSync()[0]!])).toBeLessThan(1e-5);
    lc.backward();
    lg.backward();
    expect(relErr(await xg.grad!.data(), xc.grad!.dataSync())).toBeLessThan(1e-5);
    const pc = new Map(mc.namedParameters());
    for (const [name, p] of mg.namedParameters()) {
      const q = pc.get(name)!;
      if (q.grad === null) {
        expect(p.grad, name).toBeNull();
        continue;
      }
      expect(relErr(await p.grad!.data(), q.grad.dataSync()), name).toBeLessThan(1e-5);
    }
    const bc = mc.gate.updateBias(undefined, 0.001);
    const bg = await mg.gate.updateBiasAsync(undefined, 0.001);
    expect(Array.from(bg)).toEqual(Array.from(bc));
    expect(Array.from(await mg.gate.bias!.data())).toEqual(Array.from(bc));
  });
});
