// Config presets: the published DeepSeek-V3 shape (for accounting; far too large to instantiate
// here) and small shapes that train on a CPU.
import { parseConfig, type ModelConfig } from './config.js';

const yarn = (factor: number, original: number) => ({
  type: 'yarn',
  factor,
  original_max_position_embeddings: original,
  beta_fast: 32,
  beta_slow: 1,
  mscale: 1,
  mscale_all_dim: 1,
});

// The issues' benchmark shape (hidden 1024, 8 layers, 64 routed experts top-6), shared by two presets.
const smallV3 = {
  model_type: 'deepseek_v3',
  vocab_size: 4096,
  hidden_size: 1024,
  intermediate_size: 2816,
  moe_intermediate_size: 256,
  num_hidden_layers: 8,
  first_k_dense_replace: 1,
  num_attention_heads: 8,
  n_shared_experts: 1,
  n_routed_experts: 64,
  num_experts_per_tok: 6,
  n_group: 8,
  topk_group: 4,
  routed_scaling_factor: 2.5,
  scoring_func: 'sigmoid',
  norm_topk_prob: true,
  q_lora_rank: 384,
  kv_lora_rank: 256,
  qk_nope_head_dim: 64,
  qk_rope_head_dim: 32,
  v_head_dim: 64,
  max_position_embeddings: 4096,
  rope_theta: 10000,
  rope_scaling: null,
  num_nextn_predict_layers: 1,
  bos_token_id: 0,
  eos_token_id: 1,
} as const;

export const PRESETS = {
  /** DeepSeek-V3 / R1 (671B total, 37B activated). */
  'deepseek-v3': {
    model_type: 'deepseek_v3',
    vocab_size: 129280,
    hidden_size: 7168,
    intermediate_size: 18432,
    moe_intermediate_size: 2048,
    num_hidden_layers: 61,
    first_k_dense_replace: 3,
    num_attention_heads: 128,
    n_shared_experts: 1,
    n_routed_experts: 256,
    num_experts_per_tok: 8,
    n_group: 8,
    topk_group: 4,
    routed_scaling_factor: 2.5,
    scoring_func: 'sigmoid',
    norm_topk_prob: true,
    q_lora_rank: 1536,
    kv_lora_rank: 512,
    qk_nope_head_dim: 128,
    qk_rope_head_dim: 64,
    v_head_dim: 128,
    max_position_embeddings: 163840,
    rope_theta: 10000,
    rope_scaling: yarn(40, 4096),
    num_nextn_predict_layers: 1,
    bos_token_id: 0,
    eos_token_id: 1,
  },
  /** A V3-shaped model of ~30M parameters that trains on a CPU. */
  'tiny-v3': {
    model_type: 'deepseek_v3',
    vocab_size: 1024,
    hidden_size: 128,
    intermediate_size: 256,
    moe_intermediate_size: 128,
    num_hidden_layers: 4,
    first_k_dense_replace: 1,
    num_attention_heads: 4,
    n_shared_experts: 1,
    n_routed_experts: 16,
    num_experts_per_tok: 4,
    n_group: 4,
    topk_group: 2,
    routed_scaling_factor: 2.5,
    scoring_func: 'sigmoid',
    norm_topk_prob: true,
    q_lora_rank: 128,
    kv_lora_rank: 64,
    qk_nope_head_dim: 32,
    qk_rope_head_dim: 16,
    v_head_dim: 32,
    max_position_embeddings: 128,
    rope_theta: 10000,
    rope_scaling: yarn(4, 32),
    num_nextn_predict_layers: 1,
    bos_token_id: 0,
    eos_token_id: 1,
  },
  /** The benchmark shape of the issues: hidden 1024, 8 layers, 64 experts. */
  'small-v3': smallV3,
  /**
   * The V3-shaped benchmark checkpoint (`../shared/scripts/make-v3-mini.py`, the trainer's `mini`):
   * small-v3 with DeepSeek-V3's 129,280-token vocabulary, 646M parameters.
   */
  'v3-mini': { ...smallV3, vocab_size: 129280, num_key_value_heads: 8 },
} as const;

export type PresetName = keyof typeof PRESETS;

export function presetConfig(name: PresetName): ModelConfig {
  const raw = PRESETS[name];
  if (!raw) throw new Error(`unknown preset ${JSON.stringify(name)}; known: ${Object.keys(PRESETS).join(', ')}`);
  return parseConfig(raw);
}
