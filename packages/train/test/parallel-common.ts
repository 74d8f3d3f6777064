// What the parallel-step equality test and its ranks share: the model, the batches, the recipe.
import { AdamW, Rng, type Parameter } from '@dsv3/core';
import { DeepseekV3ForCausalLM, parseConfig } from '@dsv3/model';
import { PRESET_MODELS } from '../src/index.js';
import { initRankModel, type RankShardOptions } from '../src/parallel/index.js';
import type { StepInputs } from '../src/step.js';

export const SEQ_LEN = 8;
export const SEQUENCES = 16;
export const STEPS = 2;

/** The tiny preset in f64, so that only summation order can separate a layout from one process. */
export function tinyF64(): DeepseekV3ForCausalLM {
  return new DeepseekV3ForCausalLM(parseConfig({ ...PRESET_MODELS.tiny }), { seed: 7, dtype: 'f64' });
}

/**
 * tinyF64() as a parallel rank builds it: only that rank's shards get memory (and values). `overrides`
 * change the preset's config fields (e.g. first_k_dense_replace: 0 puts a MoE layer in every stage).
 */
export function tinyF64Rank(
  o: RankShardOptions,
  overrides: Record<string, unknown> = {},
): { model: DeepseekV3ForCausalLM; materializedBytes: number } {
  return initRankModel(parseConfig({ ...PRESET_MODELS.tiny, ...overrides }), { seed: 7, dtype: 'f64' }, o);
}

export function paramGroups(model: DeepseekV3ForCausalLM): { params: Parameter[]; weightDecay: number }[] {
  const all = model.parameters();
  return [
    { params: all.filter((p) => p.value.ndim >= 2), weightDecay: 0.1 },
    { params: all.filter((p) => p.value.ndim < 2), weightDecay: 0 },
  ];
}

export const OPTIMIZER = { betas: [0.9, 0.95] as [number, number], eps: 1e-8, momentDType: 'bf16' as const };

export function adamsOf(model: DeepseekV3ForCausalLM): AdamW[] {
  return paramGroups(model).map(
    (g) =>
      new AdamW(g.params, {
        betas: OPTIMIZER.betas,
        eps: OPTIMIZER.eps,
        weightDecay: g.weightDecay,
        stateDType: OPTIMIZER.momentDType,
      }),
  );
}

export function stepInputs(step: number, microBatch: number): StepInputs {
  const rng = new Rng(1000 + step);
  const sequences = Array.from({ length: SEQUENCES }, () =>
    Int32Array.from({ length: SEQ_LEN }, () => Math.floor(rng.uniform() * 256)),
  );
  return { sequences, microBatch, lr: 2e-3, mtpLambda: 0.3, seqAuxAlpha: 1e-2, biasUpdateSpeed: 1e-3, clipNorm: 1.0 };
}

export function flatParams(model: DeepseekV3ForCausalLM): Float64Array {
  const ps = model.parameters();
  const out = new Float64Array(ps.reduce((a, p) => a + p.value.size, 0));
  let o = 0;
  for (const p of ps) {
    out.set(p.value.dataSync(), o);
    o += p.value.size;
  }
  return out;
}
