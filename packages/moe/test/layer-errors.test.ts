import { describe, expect, it } from 'vitest';
import { tensor } from '@dsv3/core';
import { MoE, MoEGate, moeConfigFromHf } from '../src/index';
import { moeConfig, randValues } from './layer-helpers';

const cfg = moeConfig();

describe('MoE: bad configurations and inputs give clear errors', () => {
  it('top-k larger than the experts of the kept groups', () => {
    expect(() => new MoE({ ...cfg, topkGroup: 1, numExpertsPerTok: 3 })).toThrow(
      'numExpertsPerTok=3 > experts in the kept groups (topkGroup*E/nGroup = 2)',
    );
    expect(() => new MoEGate({ ...cfg, numExpertsPerTok: 9, nGroup: 1, topkGroup: 1 })).toThrow(
      /numExpertsPerTok=9 > experts in the kept groups/,
    );
  });

  it('groups that do not divide the experts, more kept groups than groups', () => {
    expect(() => new MoE({ ...cfg, nRoutedExperts: 10 })).toThrow('nRoutedExperts=10 is not divisible by nGroup=4');
    expect(() => new MoE({ ...cfg, topkGroup: 5 })).toThrow('topkGroup=5 > nGroup=4');
    expect(() => new MoE({ ...cfg, nGroup: 0 })).toThrow('nGroup must be a positive integer, got 0');
  });

  it('other bad fields', () => {
    expect(() => new MoE({ ...cfg, moeIntermediateSize: 0 })).toThrow(/moeIntermediateSize must be a positive integer/);
    expect(() => new MoE({ ...cfg, nSharedExperts: -1 })).toThrow(/nSharedExperts must be a non-negative integer/);
    expect(() => new MoE({ ...cfg, scoringFunc: 'relu' as never })).toThrow(/unknown scoringFunc relu/);
    expect(() => new MoE({ ...cfg, routedScalingFactor: NaN })).toThrow(/routedScalingFactor must be finite/);
  });

  it('NaN scores name the token (the CPU routing kernel checks its input)', () => {
    const moe = new MoE(cfg, { seed: 1 });
    const v = new Float32Array(randValues(4 * 24, 2));
    v[2 * 24 + 5] = NaN;
    const x = tensor(v, { shape: [4, 24] });
    expect(() => moe.forward(x)).toThrow(/gate scores of token 2 contain NaN \(expert 0\)/);
    expect(() => moe.forward(x, { routeOverride: [0, 1, 0, 1, 0, 1, 0, 1] })).toThrow(
      /gate scores of token 2 contain NaN/,
    );
  });

  it('wrong hidden size, dtype or backend of the input', () => {
    const moe = new MoE(cfg, { seed: 1 });
    expect(() => moe.forward(tensor(new Float32Array(2 * 20), { shape: [2, 20] }))).toThrow(
      'MoE: input has hidden size 20 (shape [2, 20]), expected hidden_size 24',
    );
    expect(() => moe.gate.forward(tensor(new Float32Array(2 * 20), { shape: [2, 20] }))).toThrow(
      /MoEGate: input has hidden size 20/,
    );
    expect(() => moe.forward(tensor(new Float64Array(2 * 24), { shape: [2, 24] }))).toThrow(
      "MoE: input is f64 but the experts are f32; cast the input (or build the layer with dtype 'f64')",
    );
    expect(() => moe.forward(tensor(new Int32Array(2 * 24), { shape: [2, 24] }))).toThrow(/MoE: input is i32/);
  });

  it('Hugging Face configs that are not a DeepSeek MoE', () => {
    expect(() => moeConfigFromHf({ hidden_size: 8 })).toThrow(/n_routed_experts is missing/);
    expect(() =>
      moeConfigFromHf({
        hidden_size: 8,
        n_routed_experts: 4,
        num_experts_per_tok: 2,
        moe_intermediate_size: 4,
        topk_method: 'sinkhorn',
      }),
    ).toThrow(/unknown topk_method "sinkhorn"/);
    expect(() =>
      moeConfigFromHf({
        hidden_size: 8,
        n_routed_experts: 4,
        num_experts_per_tok: 2,
        moe_intermediate_size: 4,
        hidden_act: 'gelu',
      }),
    ).toThrow(/hidden_act "gelu" is not supported/);
    expect(() => moeConfigFromHf({ hidden_size: 8, n_routed_experts: 4, moe_intermediate_size: 4 })).toThrow(
      /num_experts_per_tok must be a positive integer/,
    );
    // V2-Lite style: greedy softmax routing, no groups, no bias
    const v2 = moeConfigFromHf({
      hidden_size: 8,
      n_routed_experts: 64,
      num_experts_per_tok: 6,
      moe_intermediate_size: 4,
      topk_method: 'greedy',
      scoring_func: 'softmax',
      n_group: 1,
      topk_group: 1,
      norm_topk_prob: false,
      routed_scaling_factor: 1,
      n_shared_experts: 2,
    });
    expect(v2).toMatchObject({
      nGroup: 1,
      topkGroup: 1,
      useCorrectionBias: false,
      groupScore: 'max',
      scoringFunc: 'softmax',
      nSharedExperts: 2,
    });
  });

  it('a state dict with the wrong shapes is refused by name', () => {
    const moe = new MoE(cfg, { seed: 1 });
    const sd = moe.stateDict();
    sd['experts.3.up_proj.weight'] = tensor(new Float32Array(5), { shape: [5] });
    expect(() => moe.loadStateDict(sd)).toThrow(/experts\.3\.up_proj\.weight: shape \[5\], expected \[12, 24\]/);
  });
});
