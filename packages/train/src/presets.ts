// The trainer's presets. `tiny` trains visibly in minutes on two CPU cores; `mini` is the V3-shaped
// benchmark model (the shape ../shared/scripts/make-v3-mini.py makes) with DeepSeek-V3's tokenizer.
import { PRESETS } from '@dsv3/model';
import type { TrainConfigInput } from './config.js';

const v3Common = {
  model_type: 'deepseek_v3',
  architectures: ['DeepseekV3ForCausalLM'],
  scoring_func: 'sigmoid',
  topk_method: 'noaux_tc',
  norm_topk_prob: true,
  routed_scaling_factor: 2.5,
  hidden_act: 'silu',
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  rope_scaling: null,
  tie_word_embeddings: false,
  attention_bias: false,
} as const;

/** HF config.json objects of the presets' models. */
export const PRESET_MODELS = {
  /** ~1.8M parameters (0.66M activated per token), byte-level vocabulary (256 bytes + BOS + EOS). */
  tiny: {
    ...v3Common,
    vocab_size: 258,
    hidden_size: 128,
    intermediate_size: 320,
    moe_intermediate_size: 64,
    num_hidden_layers: 3,
    first_k_dense_replace: 1,
    num_attention_heads: 4,
    num_key_value_heads: 4,
    n_shared_experts: 1,
    n_routed_experts: 16,
    num_experts_per_tok: 4,
    n_group: 4,
    topk_group: 2,
    q_lora_rank: 96,
    kv_lora_rank: 64,
    qk_nope_head_dim: 32,
    qk_rope_head_dim: 16,
    v_head_dim: 32,
    max_position_embeddings: 1024,
    num_nextn_predict_layers: 1,
    bos_token_id: 256,
    eos_token_id: 257,
  },
  /** The V3-shaped benchmark model: vocabulary 129,280, hidden 1024, 8 layers, 64 experts top-6. */
  mini: { ...v3Common, ...PRESETS['v3-mini'] },
} as const;

export type TrainPreset = keyof typeof PRESET_MODELS;

/** Full training configs of the presets (V3's recipe at the presets' scale). */
export const PRESET_CONFIGS: Record<TrainPreset, TrainConfigInput> = {
  tiny: {
    model: { preset: 'tiny' },
    tokenizer: 'byte-level',
    // V3's shape of schedule, compressed: warm-up, constant, cosine to lr/10, constant.
    schedule: { type: 'v3', lr: 3e-3, warmupSteps: 20, constantSteps: 180, decaySteps: 200, minLr: 3e-4, tail: [] },
    batch: { sequences: 8, microBatch: 4, seqLen: 128, ramp: { from: 4, steps: 20 } },
    optimizer: { weightDecay: 0.1, clipNorm: 1.0, momentDType: 'bf16' },
    precision: 'bf16',
    mtp: { depth: 1, lambda: 0.3, later: { fromStep: 300, lambda: 0.1 } },
    // γ scaled up from V3's 0.001 so the bias can move within a few hundred steps.
    balance: { biasUpdateSpeed: 0.01, sequenceAuxAlpha: 0.0001 },
    intervals: { log: 1, eval: 50, evalBatches: 2, checkpoint: 100, keepLast: 2 },
    steps: 300,
    seed: 0,
  },
  mini: {
    model: { preset: 'mini', initStd: 0.006 },
    tokenizer: 'deepseek-v3',
    schedule: { type: 'v3', lr: 2.2e-4, warmupSteps: 20, constantSteps: 500, decaySteps: 400, minLr: 2.2e-5, tail: [] },
    batch: { sequences: 4, microBatch: 2, seqLen: 256, ramp: null },
    precision: 'bf16',
    mtp: { depth: 1, lambda: 0.3 },
    intervals: { log: 1, eval: 100, evalBatches: 2, checkpoint: 200, keepLast: 2 },
    steps: 1000,
    seed: 0,
  },
};
