import { describe, expect, it } from 'vitest';
import { noGrad, tensor } from '@dsv3/core';
import { MoE, moeConfigFromHf, type MoEConfig } from '../src/index';
import { moeConfig, randValues, referenceMoE, relErr } from './layer-helpers';

interface Case {
  name: string;
  T: number;
  cfg: MoEConfig;
  /** extra leading axes of the input (T = product) */
  shape?: number[];
  bias?: (E: number) => Float32Array;
  expectIdle?: boolean;
}

const base = moeConfig;

const cases: Case[] = [
  {
    name: 'one token, 4 experts, top-1, no groups, no shared expert',
    T: 1,
    cfg: base({ nRoutedExperts: 4, numExpertsPerTok: 1, nGroup: 1, topkGroup: 1, nSharedExperts: 0 }),
    expectIdle: true,
  },
  { name: 'ragged 7 tokens, 8 experts in 4 groups (keep 2), top-2', T: 7, cfg: base({}) },
  {
    name: '[3, 11] tokens, 16 experts in 4 groups (keep 2), top-4, 2 shared, random bias',
    T: 33,
    shape: [3, 11],
    cfg: base({ nRoutedExperts: 16, numExpertsPerTok: 4, nSharedExperts: 2 }),
    bias: (E) => Float32Array.from(randValues(E, 5, 0.3)),
  },
  {
    name: '5 tokens, 32 experts in 8 groups (keep 3), top-6: idle experts',
    T: 5,
    cfg: base({ nRoutedExperts: 32, numExpertsPerTok: 6, nGroup: 8, topkGroup: 3 }),
    expectIdle: true,
  },
  {
    name: '40 tokens, experts 0-5 pushed out by a large negative bias',
    T: 40,
    cfg: base({ nRoutedExperts: 16, numExpertsPerTok: 3, nGroup: 8, topkGroup: 4 }),
    bias: (E) => Float32Array.from({ length: E }, (_, e) => (e < 6 ? -5 : 0)),
    expectIdle: true,
  },
  {
    name: 'softmax scoring, no normalization, group max (V2 group_limited_greedy)',
    T: 19,
    cfg: base({
      scoringFunc: 'softmax',
      normTopkProb: false,
      routedScalingFactor: 1,
      useCorrectionBias: false,
      nRoutedExperts: 12,
      nGroup: 3,
      topkGroup: 2,
      numExpertsPerTok: 3,
    }),
  },
  {
    name: '64 tokens, 64 experts in 8 groups (keep 4), top-6 (the bench shape, small)',
    T: 64,
    cfg: base({
      hiddenSize: 32,
      moeIntermediateSize: 16,
      nRoutedExperts: 64,
      numExpertsPerTok: 6,
      nGroup: 8,
      topkGroup: 4,
    }),
    bias: (E) => Float32Array.from(randValues(E, 9, 0.05)),
  },
];

describe('MoE layer vs a float64 per-token loop over the experts', () => {
  for (const c of cases) {
    for (const impl of ['fused', 'composed'] as const) {
      it(`${c.name} (${impl} grouped GEMM)`, () => {
        const moe = new MoE(c.cfg, { seed: 11, impl });
        if (c.bias) moe.gate.setBias(c.bias(c.cfg.nRoutedExperts));
        const shape = [...(c.shape ?? [c.T]), c.cfg.hiddenSize];
        const x = tensor(randValues(c.T * c.cfg.hiddenSize, 3), { shape, dtype: 'f32' });
        const { output, routing } = moe.forwardWithRouting(x);
        expect([...output.shape]).toEqual(shape);
        const ref = referenceMoE(moe, x);
        // same experts, same order
        const k = c.cfg.numExpertsPerTok;
        for (let t = 0; t < c.T; t++)
          expect(Array.from(routing.indices.dataSync().subarray(t * k, (t + 1) * k)), `token ${t}`).toEqual(
            ref.indices[t],
          );
        expect(relErr(routing.weights.dataSync(), ref.weights.flat())).toBeLessThan(1e-6);
        const err = relErr(output.dataSync(), ref.out);
        expect(err).toBeLessThanOrEqual(1e-5);
        // every pair dispatched exactly once, loads add up, idle experts where expected
        expect(routing.plan.offsets.dataSync()[c.cfg.nRoutedExperts]).toBe(c.T * k);
        const load = Array.from(routing.load.dataSync());
        expect(load.reduce((a, b) => a + b, 0)).toBe(c.T * k);
        if (c.expectIdle) expect(load.some((l) => l === 0)).toBe(true);
      });
    }
  }

  it('forward is deterministic and reads as well asynchronously; eval mode does not record loads', async () => {
    const moe = new MoE(base({}), { seed: 2 });
    const x = tensor(randValues(10 * 24, 8), { shape: [10, 24], dtype: 'f32' });
    const a = moe.forward(x).dataSync();
    const b = await moe.forward(x).data();
    expect(Array.from(b)).toEqual(Array.from(a));
    expect(Array.from(moe.gate.pendingLoad.dataSync()).reduce((s, v) => s + v, 0)).toBe(40);
    moe.eval();
    noGrad(() => moe.forward(x));
    expect(Array.from(moe.gate.pendingLoad.dataSync()).reduce((s, v) => s + v, 0)).toBe(40);
    expect(Array.from(moe.lastRouting!.load.dataSync()).reduce((s, v) => s + v, 0)).toBe(20);
  });

  it('routeOverride sends tokens to the given experts with the gate weights of those experts', () => {
    const cfg = base({});
    const moe = new MoE(cfg, { seed: 4 });
    const x = tensor(randValues(3 * 24, 6), { shape: [3, 24], dtype: 'f32' });
    const forced = [0, 1, 2, 3, 7, 7];
    const { routing } = moe.forwardWithRouting(x, { routeOverride: forced });
    expect(Array.from(routing.indices.dataSync())).toEqual(forced);
    const s = routing.scores.dataSync();
    for (let t = 0; t < 3; t++) {
      const a = s[t * 8 + forced[2 * t]!]!;
      const b = s[t * 8 + forced[2 * t + 1]!]!;
      expect(routing.weights.dataSync()[2 * t]).toBeCloseTo((2.5 * a) / (a + b), 6);
    }
    expect(() => moe.forward(x, { routeOverride: [0, 1, 2] })).toThrow(
      /routeOverride has 3 entries, expected T\*k = 3\*2/,
    );
    expect(() => moe.forward(x, { routeOverride: [0, 1, 2, 3, 4, 8] })).toThrow(/not an expert index in \[0, 8\)/);
  });

  it('an empty batch gives an empty output', () => {
    const moe = new MoE(base({}), { seed: 1 });
    const out = moe.forward(tensor(new Float32Array(0), { shape: [0, 24] }));
    expect([...out.shape]).toEqual([0, 24]);
  });

  it('bf16 experts: the gate still computes in f32, the layer output stays close to the f64 reference', () => {
    const moe = new MoE(base({}), { seed: 3, dtype: 'bf16', gateDType: 'f32' });
    const xf = tensor(randValues(9 * 24, 12), { shape: [9, 24], dtype: 'f32' });
    const x = xf.cast('bf16');
    const out = moe.forward(x);
    expect(out.dtype).toBe('bf16');
    expect(moe.gate.scores(x).dtype).toBe('f32');
    const ref = referenceMoE(moe, x);
    expect(relErr(out.dataSync(), ref.out)).toBeLessThan(2e-2);
  });

  it('accepts a Hugging Face config directly', () => {
    const hf = {
      hidden_size: 16,
      n_routed_experts: 8,
      num_experts_per_tok: 2,
      n_group: 2,
      topk_group: 1,
      moe_intermediate_size: 8,
      n_shared_experts: 1,
      topk_method: 'noaux_tc',
    };
    const moe = new MoE(hf, { seed: 0 });
    expect(moe.config).toEqual(moeConfigFromHf(hf));
    expect(moe.gate.bias).not.toBeNull();
    expect(moe.sharedExperts?.hidden).toBe(8);
  });
});
