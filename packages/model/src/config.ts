// The Hugging Face `config.json` of a `deepseek_v3` model: parsed, validated (zod) and normalised
// into the camelCase shape the rest of dsv3 uses. Errors list every bad field at once.
import { z } from 'zod';

const positiveInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();

const ropeScalingSchema = z
  .object({
    type: z.string().optional(),
    rope_type: z.string().optional(),
    factor: z.number().positive(),
    original_max_position_embeddings: positiveInt,
    beta_fast: z.number().positive().default(32),
    beta_slow: z.number().positive().default(1),
    mscale: z.number().default(1),
    mscale_all_dim: z.number().default(0),
  })
  .refine((r) => (r.rope_type ?? r.type) === 'yarn', {
    message: 'only yarn rope_scaling is supported (type/rope_type must be "yarn")',
  });

const quantizationSchema = z.object({
  quant_method: z.literal('fp8'),
  fmt: z.enum(['e4m3']).default('e4m3'),
  activation_scheme: z.enum(['dynamic']).default('dynamic'),
  weight_block_size: z.tuple([positiveInt, positiveInt]).default([128, 128]),
  scale_fmt: z.enum(['ue8m0']).nullish(),
});

const hfSchema = z
  .object({
    model_type: z.literal('deepseek_v3'),
    vocab_size: positiveInt,
    hidden_size: positiveInt,
    intermediate_size: positiveInt,
    moe_intermediate_size: positiveInt,
    num_hidden_layers: positiveInt,
    first_k_dense_replace: nonNegInt.default(0),
    moe_layer_freq: positiveInt.default(1),
    num_attention_heads: positiveInt,
    num_key_value_heads: positiveInt.optional(),
    n_shared_experts: nonNegInt.nullable().default(0),
    n_routed_experts: positiveInt,
    num_experts_per_tok: positiveInt,
    n_group: positiveInt.default(1),
    topk_group: positiveInt.default(1),
    routed_scaling_factor: z.number().positive().default(1),
    scoring_func: z.enum(['sigmoid', 'softmax']).default('sigmoid'),
    topk_method: z.enum(['noaux_tc', 'greedy', 'group_limited_greedy']).default('noaux_tc'),
    norm_topk_prob: z.boolean().default(true),
    q_lora_rank: positiveInt.nullable(),
    kv_lora_rank: positiveInt,
    qk_nope_head_dim: positiveInt,
    qk_rope_head_dim: positiveInt,
    v_head_dim: positiveInt,
    hidden_act: z.literal('silu').default('silu'),
    max_position_embeddings: positiveInt,
    rms_norm_eps: z.number().positive().default(1e-6),
    rope_theta: z.number().positive().default(10000),
    rope_scaling: ropeScalingSchema.nullish(),
    num_nextn_predict_layers: nonNegInt.default(0),
    tie_word_embeddings: z.boolean().default(false),
    attention_bias: z.literal(false).default(false),
    bos_token_id: nonNegInt.nullish(),
    eos_token_id: z.union([nonNegInt, z.array(nonNegInt)]).nullish(),
    quantization_config: quantizationSchema.nullish(),
  })
  .superRefine((c, ctx) => {
    const issue = (path: string, message: string): void => void ctx.addIssue({ code: 'custom', path: [path], message });
    if (c.n_routed_experts % c.n_group !== 0)
      issue('n_group', `n_routed_experts (${c.n_routed_experts}) must be divisible by n_group (${c.n_group})`);
    if (c.topk_group > c.n_group) issue('topk_group', `topk_group (${c.topk_group}) exceeds n_group (${c.n_group})`);
    const kept = (c.n_routed_experts / c.n_group) * c.topk_group;
    if (c.num_experts_per_tok > kept)
      issue(
        'num_experts_per_tok',
        `num_experts_per_tok (${c.num_experts_per_tok}) exceeds the experts in the kept groups (${kept})`,
      );
    if (c.qk_rope_head_dim % 2 !== 0)
      issue('qk_rope_head_dim', `qk_rope_head_dim (${c.qk_rope_head_dim}) must be even`);
    if (c.first_k_dense_replace > c.num_hidden_layers)
      issue('first_k_dense_replace', `first_k_dense_replace exceeds num_hidden_layers`);
  });

export type HfDeepseekV3Config = z.input<typeof hfSchema>;

/** YaRN scaling with every field resolved (an @dsv3/mla YarnScaling, so ModelConfig is an MLAConfig). */
export interface RopeScaling {
  type: 'yarn';
  factor: number;
  originalMaxPositionEmbeddings: number;
  betaFast: number;
  betaSlow: number;
  mscale: number;
  mscaleAllDim: number;
}

export interface ModelConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  moeIntermediateSize: number;
  numHiddenLayers: number;
  firstKDenseReplace: number;
  moeLayerFreq: number;
  numHeads: number;
  nSharedExperts: number;
  nRoutedExperts: number;
  numExpertsPerTok: number;
  nGroup: number;
  topkGroup: number;
  routedScalingFactor: number;
  scoringFunc: 'sigmoid' | 'softmax';
  topkMethod: 'noaux_tc' | 'greedy' | 'group_limited_greedy';
  normTopkProb: boolean;
  qLoraRank: number | null;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  numNextnPredictLayers: number;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
  quantization: { blockSize: [number, number]; scaleFormat: 'fp32' | 'ue8m0' } | null;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Parses a deepseek_v3 config.json object; throws a ConfigError listing every problem. */
export function parseConfig(raw: unknown): ModelConfig {
  const r = hfSchema.safeParse(raw);
  if (!r.success) {
    const lines = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new ConfigError(`invalid deepseek_v3 config:\n  ${lines.join('\n  ')}`);
  }
  const c = r.data;
  const rs = c.rope_scaling;
  return {
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    moeIntermediateSize: c.moe_intermediate_size,
    numHiddenLayers: c.num_hidden_layers,
    firstKDenseReplace: c.first_k_dense_replace,
    moeLayerFreq: c.moe_layer_freq,
    numHeads: c.num_attention_heads,
    nSharedExperts: c.n_shared_experts ?? 0,
    nRoutedExperts: c.n_routed_experts,
    numExpertsPerTok: c.num_experts_per_tok,
    nGroup: c.n_group,
    topkGroup: c.topk_group,
    routedScalingFactor: c.routed_scaling_factor,
    scoringFunc: c.scoring_func,
    topkMethod: c.topk_method,
    normTopkProb: c.norm_topk_prob,
    qLoraRank: c.q_lora_rank,
    kvLoraRank: c.kv_lora_rank,
    qkNopeHeadDim: c.qk_nope_head_dim,
    qkRopeHeadDim: c.qk_rope_head_dim,
    vHeadDim: c.v_head_dim,
    maxPositionEmbeddings: c.max_position_embeddings,
    rmsNormEps: c.rms_norm_eps,
    ropeTheta: c.rope_theta,
    ropeScaling: rs
      ? {
          type: 'yarn',
          factor: rs.factor,
          originalMaxPositionEmbeddings: rs.original_max_position_embeddings,
          betaFast: rs.beta_fast,
          betaSlow: rs.beta_slow,
          mscale: rs.mscale,
          mscaleAllDim: rs.mscale_all_dim,
        }
      : null,
    numNextnPredictLayers: c.num_nextn_predict_layers,
    tieWordEmbeddings: c.tie_word_embeddings,
    bosTokenId: c.bos_token_id ?? null,
    eosTokenIds: c.eos_token_id == null ? [] : Array.isArray(c.eos_token_id) ? c.eos_token_id : [c.eos_token_id],
    quantization: c.quantization_config
      ? {
          blockSize: c.quantization_config.weight_block_size as [number, number],
          scaleFormat: c.quantization_config.scale_fmt === 'ue8m0' ? 'ue8m0' : 'fp32',
        }
      : null,
  };
}

/** Whether layer `i` uses MoE (DeepSeek: after the first k dense layers, every moe_layer_freq-th). */
export function isMoeLayer(c: ModelConfig, i: number): boolean {
  return i >= c.firstKDenseReplace && i % c.moeLayerFreq === 0;
}

/** Back to Hugging Face field names (for saving a checkpoint in the same layout). */
export function toHfConfig(c: ModelConfig): Record<string, unknown> {
  return {
    architectures: ['DeepseekV3ForCausalLM'],
    model_type: 'deepseek_v3',
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    moe_intermediate_size: c.moeIntermediateSize,
    num_hidden_layers: c.numHiddenLayers,
    first_k_dense_replace: c.firstKDenseReplace,
    moe_layer_freq: c.moeLayerFreq,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numHeads,
    n_shared_experts: c.nSharedExperts,
    n_routed_experts: c.nRoutedExperts,
    num_experts_per_tok: c.numExpertsPerTok,
    n_group: c.nGroup,
    topk_group: c.topkGroup,
    routed_scaling_factor: c.routedScalingFactor,
    scoring_func: c.scoringFunc,
    topk_method: c.topkMethod,
    norm_topk_prob: c.normTopkProb,
    q_lora_rank: c.qLoraRank,
    kv_lora_rank: c.kvLoraRank,
    qk_nope_head_dim: c.qkNopeHeadDim,
    qk_rope_head_dim: c.qkRopeHeadDim,
    v_head_dim: c.vHeadDim,
    hidden_act: 'silu',
    max_position_embeddings: c.maxPositionEmbeddings,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    rope_scaling: c.ropeScaling && {
      type: 'yarn',
      rope_type: 'yarn',
      factor: c.ropeScaling.factor,
      original_max_position_embeddings: c.ropeScaling.originalMaxPositionEmbeddings,
      beta_fast: c.ropeScaling.betaFast,
      beta_slow: c.ropeScaling.betaSlow,
      mscale: c.ropeScaling.mscale,
      mscale_all_dim: c.ropeScaling.mscaleAllDim,
    },
    num_nextn_predict_layers: c.numNextnPredictLayers,
    tie_word_embeddings: c.tieWordEmbeddings,
    attention_bias: false,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenIds.length === 1 ? c.eosTokenIds[0] : c.eosTokenIds,
    ...(c.quantization && {
      quantization_config: {
        quant_method: 'fp8',
        fmt: 'e4m3',
        activation_scheme: 'dynamic',
        weight_block_size: c.quantization.blockSize,
      },
    }),
  };
}
