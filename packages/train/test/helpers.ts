// Shared test configs: a micro model that trains in seconds on the CPU.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseTrainConfig, type TrainConfig, type TrainConfigInput } from '../src/index.js';

export const MICRO_MODEL = {
  vocab_size: 258,
  hidden_size: 32,
  intermediate_size: 64,
  moe_intermediate_size: 16,
  num_hidden_layers: 2,
  first_k_dense_replace: 1,
  num_attention_heads: 2,
  num_key_value_heads: 2,
  n_routed_experts: 8,
  num_experts_per_tok: 2,
  n_group: 4,
  topk_group: 2,
  q_lora_rank: 24,
  kv_lora_rank: 16,
  qk_nope_head_dim: 8,
  qk_rope_head_dim: 8,
  v_head_dim: 8,
  max_position_embeddings: 256,
};

export function microConfigInput(extra: Partial<TrainConfigInput> = {}): TrainConfigInput {
  return {
    model: { preset: 'tiny', overrides: MICRO_MODEL },
    tokenizer: 'byte-level',
    schedule: { type: 'v3', lr: 3e-3, warmupSteps: 2, constantSteps: 2, decaySteps: 4, minLr: 3e-4, tail: [] },
    batch: { sequences: 4, microBatch: 2, seqLen: 32, ramp: null },
    precision: 'fp32',
    intervals: { log: 1, eval: 2, evalBatches: 1, checkpoint: 2, keepLast: 2 },
    data: { shuffleBuffer: 16 },
    steps: 4,
    seed: 3,
    ...extra,
  };
}

export function microConfig(extra: Partial<TrainConfigInput> = {}): TrainConfig {
  return parseTrainConfig(microConfigInput(extra));
}

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `dsv3-train-${prefix}-`));
}
