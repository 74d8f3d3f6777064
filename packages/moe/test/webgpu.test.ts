// The MoE layer on WebGPU (Dawn through the optional `webgpu` package; lavapipe without a GPU) against
// the CPU. Without a usable adapter the suite is skipped with a visible warning, unless
// DSV3_REQUIRE_WEBGPU=1, which turns that into a failure.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webGpuForTests } from '@dsv3/core/node';
import { fromRaw, mul, sum, tensor, type Backend, type Tensor } from '@dsv3/core';
import {
  dispatchPlan,
  dispatchTensors,
  gateRouteFromScores,
  groupedLinear,
  MoE,
  routeTensors,
  routeWeightsFromScores,
  sequenceBalanceLossT,
  type GateConfig,
  type MoEConfig,
} from '../src/index';
import { rng } from './helpers';
import { moeConfig, randValues, relErr } from './layer-helpers';

let gpu: (Backend & { dispose(): void }) | null = null;
beforeAll(async () => {
  gpu = await webGpuForTests('moe');
});
afterAll(() => {
  gpu?.dispose();
});

const toGpu = (t: Tensor): Tensor => fromRaw(t.dtype, t.shape, t.rawSync(), gpu!);

const gateCfg = (over: Partial<GateConfig>): GateConfig => ({
  nRoutedExperts: 16,
  numExpertsPerTok: 4,
  nGroup: 4,
  topkGroup: 2,
  normTopkProb: true,
  routedScalingFactor: 2.5,
  scoringFunc: 'sigmoid',
  bias: new Float32Array(0),
  ...over,
});

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

  it('grouped GEMM over device offsets: forward, dx, dW (every expert gets one, zeros when empty)', async (ctx) => {
    if (!gpu) return ctx.skip();
    const [N, K, O] = [41, 19, 23];
    const offsets = [0, 0, 17, 17, 41];
    const xv = randValues(N * K, 2);
    const wv = [0, 1, 2, 3].map((e) => randValues(O * K, 20 + e));
    const gv = randValues(N * O, 98);
    const run = async (be: 'cpu' | 'gpu') => {
      const on = (t: Tensor) => (be === 'gpu' ? toGpu(t) : t);
      const x = on(tensor(xv, { shape: [N, K], dtype: 'f32' })).requireGrad();
      const ws = wv.map((v) => on(tensor(v, { shape: [O, K], dtype: 'f32' })).requireGrad());
      const offs = on(tensor(Int32Array.from(offsets), { dtype: 'i32' }));
      const y = groupedLinear(x, ws, offs, { impl: 'fused' });
      sum(mul(y, on(tensor(gv, { shape: [N, O], dtype: 'f32' })))).backward();
      return {
        y: await y.data(),
        dx: await x.grad!.data(),
        dw: await Promise.all(ws.map(async (w) => (w.grad ? Array.from(await w.grad.data()) : null))),
      };
    };
    const c = await run('cpu');
    const g = await run('gpu');
    expect(relErr(g.y, c.y)).toBeLessThan(1e-6);
    expect(relErr(g.dx, c.dx)).toBeLessThan(1e-6);
    // the CPU reads its own offsets: idle experts get no gradient; WebGPU cannot know without a read-back
    expect(c.dw[0]).toBeNull();
    expect(c.dw[2]).toBeNull();
    for (const e of [0, 2]) expect(g.dw[e]!.every((v) => v === 0)).toBe(true);
    for (const e of [1, 3]) expect(relErr(g.dw[e]!, c.dw[e]!)).toBeLessThan(1e-6);
  });

  it('device routing equals the host router: ragged T, ties, group limit on and off, max rule, override', async (ctx) => {
    if (!gpu) return ctx.skip();
    const cases: [string, number, GateConfig, boolean][] = [
      ['V3 groups', 37, gateCfg({}), false],
      ['ties everywhere', 29, gateCfg({}), true],
      ['no group limit', 5, gateCfg({ nGroup: 1, topkGroup: 1 }), false],
      ['max rule, no bias', 17, gateCfg({ groupScore: 'max', bias: undefined }), true],
      ['wide, groups of one', 64, gateCfg({ nRoutedExperts: 64, nGroup: 64, topkGroup: 9, numExpertsPerTok: 6 }), true],
    ];
    for (const [name, T, cfg, ties] of cases) {
      const E = cfg.nRoutedExperts;
      const r = rng(T * 7 + E);
      // ties: scores and bias from a handful of values, so groups and experts tie often
      const scores = Float32Array.from({ length: T * E }, () => (ties ? Math.floor(r() * 4) / 4 + 0.125 : r()));
      const bias = cfg.bias ? Float32Array.from({ length: E }, () => (ties ? 0 : (r() - 0.5) * 0.1)) : undefined;
      const host = gateRouteFromScores(scores, { ...cfg, bias });
      const attrs = {
        numExperts: E,
        k: cfg.numExpertsPerTok,
        nGroup: cfg.nGroup,
        topkGroup: cfg.topkGroup,
        groupScore: cfg.groupScore ?? (bias ? 'top2sum' : 'max'),
        normTopkProb: cfg.normTopkProb,
        routedScalingFactor: cfg.routedScalingFactor,
        scoringFunc: cfg.scoringFunc,
      } as const;
      const s = toGpu(tensor(scores, { shape: [T, E] }));
      const b = bias ? toGpu(tensor(bias, { shape: [E] })) : null;
      const [idx, w] = routeTensors(s, b, null, attrs);
      expect(Array.from(await idx.data()), name).toEqual(Array.from(host.indices));
      expect(relErr(await w.data(), host.weights), name).toBeLessThan(1e-6);
      // the dispatch of those indices equals the host plan
      const plan = dispatchTensors(idx, E);
      const ref = dispatchPlan(host.indices, cfg.numExpertsPerTok, E);
      expect(Array.from(await plan.offsets.data()), name).toEqual(Array.from(ref.offsets));
      expect(Array.from(await plan.counts.data()), name).toEqual(Array.from(ref.counts));
      expect(Array.from(await plan.rows.data()), name).toEqual(Array.from(ref.sortedTokens));
      expect(Array.from(await plan.permutation.data()), name).toEqual(Array.from(ref.permutation));
      if (name !== 'V3 groups') continue;
      // an override routes to the given experts with the router's weights of those experts
      const forced = Int32Array.from({ length: T * cfg.numExpertsPerTok }, (_, i) => (i * 5 + 3) % E);
      const [oi, ow] = routeTensors(s, b, forced, attrs);
      expect(Array.from(await oi.data()), name).toEqual(Array.from(forced));
      const want = routeWeightsFromScores(scores, E, forced, cfg.numExpertsPerTok, cfg.normTopkProb, 2.5);
      expect(relErr(await ow.data(), want), name).toBeLessThan(1e-6);
    }
  });

  for (const impl of ['fused', 'composed'] as const) {
    it(`forward equals the CPU forward (${impl}), several shapes`, async (ctx) => {
      if (!gpu) return ctx.skip();
      for (const [T, over] of [
        [1, { nSharedExperts: 0 }],
        [29, {}],
        [64, { nRoutedExperts: 32, nGroup: 8, topkGroup: 3, numExpertsPerTok: 6 }],
        [7, { nGroup: 1, topkGroup: 1 }],
      ] as [number, Partial<MoEConfig>][]) {
        const c = cfg(over);
        const mc = new MoE(c, { seed: 5 });
        const mg = new MoE(c, { seed: 5, backend: gpu, impl });
        const bias = Float32Array.from(randValues(c.nRoutedExperts, 3, 0.05));
        mc.gate.setBias(bias);
        mg.gate.setBias(bias);
        const x = tensor(randValues(T * c.hiddenSize, 8 + T), { shape: [T, c.hiddenSize], dtype: 'f32' });
        const rc = mc.forwardWithRouting(x);
        const rg = mg.forwardWithRouting(toGpu(x));
        expect(Array.from(await rg.routing.indices.data())).toEqual(Array.from(rc.routing.indices.dataSync()));
        expect(relErr(await rg.routing.weights.data(), rc.routing.weights.dataSync())).toBeLessThanOrEqual(1e-6);
        expect(relErr(await rg.output.data(), rc.output.dataSync())).toBeLessThanOrEqual(1e-5);
      }
    });
  }

  it('a forward + backward of the layer, bias update included, reads nothing back from the device', async (ctx) => {
    if (!gpu) return ctx.skip();
    const be = gpu as Backend & { readbacks: number };
    const m = new MoE(cfg({}), { seed: 4, backend: gpu });
    m.gate.setBias(Float32Array.from(randValues(16, 6, 0.05)));
    const x = toGpu(tensor(randValues(12 * 40, 7), { shape: [12, 40], dtype: 'f32' })).requireGrad();
    const before = be.readbacks;
    const { output, routing } = m.forwardWithRouting(x);
    const loss = sum(mul(output, output)).add(
      sequenceBalanceLossT(routing.scores, routing.indices, { alpha: 0.01, seqLen: 6 }),
    );
    loss.backward();
    m.gate.updateBias(undefined, 0.001);
    expect(be.readbacks - before).toBe(0);
    // and the results are there when read (one read-back each)
    await loss.item();
    expect(be.readbacks - before).toBe(1);
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
    const og = mg.forwardWithRouting(xg);
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
    const bg = mg.gate.updateBias(undefined, 0.001);
    expect(Array.from(await bg.data())).toEqual(Array.from(bc.dataSync()));
    expect(Array.from(await mg.gate.bias!.data())).toEqual(Array.from(bc.dataSync()));
  });
});
