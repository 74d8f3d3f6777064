// The CPU and WebGPU (lavapipe without a GPU) layers agree on what a training step sees: the same set
// of routed experts carries a gradient once idle experts are given zeros (fillIdleExpertGrads), and NaN
// gate scores are counted on the device (the CPU router throws at once), with no read-back.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webGpuForTests } from '@dsv3/core/node';
import { fromRaw, mul, sum, tensor, type Backend, type Tensor } from '@dsv3/core';
import { MoE, routeTensors } from '../src/index';
import { moeConfig, randValues } from './layer-helpers';

let gpu: (Backend & { dispose(): void; readbacks: number }) | null = null;
beforeAll(async () => {
  gpu = (await webGpuForTests('moe')) as typeof gpu;
});
afterAll(() => gpu?.dispose());

const toBe = (t: Tensor, be: Backend): Tensor => fromRaw(t.dtype, t.shape, t.rawSync(), be);

describe('idle experts: the same gradients on the CPU and WebGPU', () => {
  it('after fillIdleExpertGrads() every expert carries a gradient (zeros when idle), equal on both', async (ctx) => {
    if (!gpu) return ctx.skip();
    // 16 experts, 3 tokens x top-2: at least 10 experts idle
    const cfg = moeConfig({ nRoutedExperts: 16, nGroup: 8, topkGroup: 2 });
    const x = tensor(randValues(3 * cfg.hiddenSize, 4), { shape: [3, cfg.hiddenSize], dtype: 'f32' });
    const g = tensor(randValues(3 * cfg.hiddenSize, 5), { shape: [3, cfg.hiddenSize], dtype: 'f32' });
    const run = async (be?: Backend) => {
      const moe = new MoE(cfg, { seed: 2, backend: be });
      const on = (t: Tensor) => (be ? toBe(t, be) : t);
      const { output, routing } = moe.forwardWithRouting(on(x));
      sum(mul(output, on(g))).backward();
      const load = Array.from(await routing.load.data());
      const grads = () => moe.experts.items.map((m) => (m.parameters()[0]!.value.grad ? 1 : 0));
      const before = grads();
      moe.fillIdleExpertGrads();
      const kept = await Promise.all(
        moe.experts.items.map(async (m) => {
          const gr = m.parameters()[0]!.value.grad;
          return gr ? Array.from(await gr.data()) : null;
        }),
      );
      return { load, before, kept };
    };
    const c = await run();
    const w = await run(gpu);
    expect(w.load).toEqual(c.load);
    const idle = c.load.map((l) => l === 0);
    expect(idle.filter(Boolean).length).toBeGreaterThanOrEqual(10);
    // before: the CPU gives idle experts none, WebGPU gives every expert one (zeros when idle)
    expect(c.before).toEqual(idle.map((i) => (i ? 0 : 1)));
    expect(w.before.every((b) => b === 1)).toBe(true);
    // after: every expert, the same values; the idle ones exactly zero
    expect(c.kept.every((k) => k !== null) && w.kept.every((k) => k !== null)).toBe(true);
    w.kept.forEach((k, e) => {
      expect(Math.max(...k!.map((v, i) => Math.abs(v - c.kept[e]![i]!)))).toBeLessThanOrEqual(1e-5);
      if (idle[e]) expect(c.kept[e]!.every((v) => v === 0) && k!.every((v) => v === 0)).toBe(true);
    });
  });
});

describe('NaN gate scores', () => {
  const cfg = moeConfig({ nRoutedExperts: 16, nGroup: 4, topkGroup: 2, numExpertsPerTok: 4 });
  const attrs = {
    numExperts: 16,
    k: 4,
    nGroup: 4,
    topkGroup: 2,
    groupScore: 'top2sum',
    normTopkProb: true,
    routedScalingFactor: 2.5,
    scoringFunc: 'sigmoid',
  } as const;
  const scores = (nanTokens: number[]): Tensor => {
    const s = Float32Array.from(randValues(5 * 16, 9), (v) => 1 / (1 + Math.exp(-v)));
    for (const t of nanTokens) s[t * 16 + ((t * 7) % 16)] = Number.NaN;
    return tensor(s, { shape: [5, 16] });
  };

  it('the CPU router throws naming the token', () => {
    expect(() => routeTensors(scores([3]), null, null, attrs)).toThrow(/token 3 contain NaN/);
  });

  it('WebGPU counts the tokens on the device; a training-mode gate accumulates them, no read-back', async (ctx) => {
    if (!gpu) return ctx.skip();
    const [, , none] = routeTensors(toBe(scores([]), gpu), null, null, attrs);
    const [, , two] = routeTensors(toBe(scores([1, 4]), gpu), null, null, attrs);
    expect(Array.from(await none.data())).toEqual([0]);
    expect(Array.from(await two.data())).toEqual([2]);
    const moe = new MoE(cfg, { seed: 3, backend: gpu });
    moe.train();
    const x = (bad: boolean) => {
      const v = Float32Array.from(randValues(5 * cfg.hiddenSize, 6));
      if (bad) v[2 * cfg.hiddenSize] = Number.NaN; // token 2's hidden state → all its scores NaN
      return toBe(tensor(v, { shape: [5, cfg.hiddenSize] }), gpu!);
    };
    const before = gpu.readbacks;
    moe.forward(x(false));
    moe.forward(x(true));
    moe.forward(x(true));
    expect(gpu.readbacks).toBe(before);
    expect(Array.from(await moe.gate.pendingNaNTokens.data())).toEqual([2]);
    moe.gate.resetPendingLoad();
    expect(Array.from(await moe.gate.pendingNaNTokens.data())).toEqual([0]);
  });
});
