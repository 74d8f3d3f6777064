// MLA configuration: the camelCase config this package uses, its validation, and the conversion
// from a Hugging Face `deepseek_v3` / `deepseek_v2` config (snake_case fields). Validation is a zod
// schema, as @dsv3/model validates its config.json.
import { z } from 'zod';

/** YaRN context extension, as in DeepSeek's `precompute_freqs_cis` and HF's `rope_type: "yarn"`. */
export interface YarnScaling {
  type: 'yarn';
  /** context extension factor (V3: 40) */
  factor: number;
  /** the pretraining context L (V3: 4096) */
  originalMaxPositionEmbeddings: number;
  /** rotations that bound the extrapolated (unscaled) band; default 32 */
  betaFast?: number;
  /** rotations that bound the interpolated (scaled by 1/factor) band; default 1 */
  betaSlow?: number;
  /**
   * HF semantics: with both `mscale` and `mscaleAllDim` set, cos/sin are multiplied by
   * m(factor, mscale) / m(factor, mscaleAllDim) (1 for every published DeepSeek config, where the two
   * are equal); with either unset (or 0), by m(factor, 1).
   */
  mscale?: number;
  /** softmax scale ·= m(factor, mscaleAllDim)², m(f, a) = 0.1·a·ln(f) + 1 (when set, non-zero and factor > 1) */
  mscaleAllDim?: number;
}

export interface MLAConfig {
  hiddenSize: number;
  numHeads: number;
  /** rank of the query compression (d_c'); null = a direct `q_proj` (V2-Lite) */
  qLoraRank: number | null;
  /** d_c: width of the cached latent c_KV */
  kvLoraRank: number;
  qkNopeHeadDim: number;
  /** d_R: width of the rotary part of each query head and of the shared rotary key (even) */
  qkRopeHeadDim: number;
  vHeadDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  maxPositionEmbeddings: number;
  ropeScaling?: YarnScaling | null;
  /**
   * RoPE pair layout. true (default, DeepSeek's published weights, HF `rope_interleave: true`):
   * adjacent pairs (x0,x1),(x2,x3)… rotate together. false: HF's `rotate_half` layout, pairs
   * (x_i, x_{i+d/2}).
   */
  ropeInterleave?: boolean;
}

export class MLAConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MLAConfigError';
  }
}

const show = (v: unknown): string => JSON.stringify(v);

/** A positive integer, with the message `MLA config: ${name} must be a positive integer, got ${v}`. */
function posInt(name: string) {
  const error = (i: { input: unknown }): string =>
    `MLA config: ${name} must be a positive integer, got ${show(i.input)}`;
  return z.number({ error }).int({ error }).min(1, { error });
}

function posNum(name: string) {
  const error = (i: { input: unknown }): string =>
    `MLA config: ${name} must be a positive number, got ${show(i.input)}`;
  return z.number({ error }).refine((v) => Number.isFinite(v) && v > 0, { error: (i) => error(i) });
}

function finiteNum(name: string) {
  const error = (i: { input: unknown }): string => `MLA config: ${name} must be a number, got ${show(i.input)}`;
  return z.number({ error }).refine(Number.isFinite, { error: (i) => error(i) });
}

const yarnSchema = z.object({
  type: z.literal('yarn', { error: (i) => `MLA config: ropeScaling.type must be 'yarn', got ${show(i.input)}` }),
  factor: posNum('ropeScaling.factor'),
  originalMaxPositionEmbeddings: posInt('ropeScaling.originalMaxPositionEmbeddings'),
  betaFast: posNum('ropeScaling.betaFast').default(32),
  betaSlow: posNum('ropeScaling.betaSlow').default(1),
  mscale: finiteNum('ropeScaling.mscale').optional(),
  mscaleAllDim: finiteNum('ropeScaling.mscaleAllDim').optional(),
});

const mlaSchema = z.object({
  hiddenSize: posInt('hiddenSize'),
  numHeads: posInt('numHeads'),
  qLoraRank: posInt('qLoraRank (or null)').nullable(),
  kvLoraRank: posInt('kvLoraRank'),
  qkNopeHeadDim: posInt('qkNopeHeadDim'),
  qkRopeHeadDim: posInt('qkRopeHeadDim').refine((v) => v % 2 === 0, {
    error: (i) => `MLA config: qkRopeHeadDim must be even (RoPE rotates pairs), got ${show(i.input)}`,
  }),
  vHeadDim: posInt('vHeadDim'),
  rmsNormEps: posNum('rmsNormEps'),
  ropeTheta: posNum('ropeTheta'),
  maxPositionEmbeddings: posInt('maxPositionEmbeddings'),
  // absent, null or false-y: no context extension
  ropeScaling: z.preprocess((v) => v || null, yarnSchema.nullable()),
  ropeInterleave: z
    .boolean()
    .nullish()
    .transform((v) => v ?? true),
});

/** Checks a config and returns it with defaults filled in (throws MLAConfigError naming every bad field). */
export function validateMlaConfig(c: MLAConfig): MLAConfig {
  if (c === null || typeof c !== 'object') throw new MLAConfigError('MLA config must be an object');
  const r = mlaSchema.safeParse(c);
  if (!r.success) throw new MLAConfigError(r.error.issues.map((i) => i.message).join('\n'));
  return r.data;
}

type Hf = Record<string, unknown>;

function field(hf: Hf, name: string): unknown {
  if (!(name in hf)) throw new MLAConfigError(`HF config: missing field '${name}'`);
  return hf[name];
}

function optNum(o: Hf, name: string): number | undefined {
  const v = o[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number')
    throw new MLAConfigError(`HF config: '${name}' must be a number, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * Converts a Hugging Face DeepSeek-V2/V3 config (`config.json`) to an MLAConfig. Reads the rope
 * settings from `rope_scaling` (transformers 4.x) or `rope_parameters` (5.x); `q_lora_rank` null
 * or 0 means a direct `q_proj`. Rejects what this package does not implement (`attention_bias`,
 * rope types other than default/yarn) and inconsistent head sizes.
 */
export function mlaConfigFromHf(hf: Hf): MLAConfig {
  if (hf === null || typeof hf !== 'object') throw new MLAConfigError('HF config must be an object');
  if (hf.attention_bias === true)
    throw new MLAConfigError(
      'HF config: attention_bias = true is not supported (DeepSeek-V2/V3 attention has no biases)',
    );
  const qLora = hf.q_lora_rank;
  const nope = field(hf, 'qk_nope_head_dim') as number;
  const rope = field(hf, 'qk_rope_head_dim') as number;
  if (hf.qk_head_dim !== undefined && hf.qk_head_dim !== nope + rope) {
    throw new MLAConfigError(
      `HF config: qk_head_dim ${JSON.stringify(hf.qk_head_dim)} != qk_nope_head_dim + qk_rope_head_dim (${nope} + ${rope})`,
    );
  }
  const heads = field(hf, 'num_attention_heads') as number;
  const kvHeads = hf.num_key_value_heads;
  if (kvHeads !== undefined && kvHeads !== null && kvHeads !== heads) {
    throw new MLAConfigError(
      `HF config: num_key_value_heads (${JSON.stringify(kvHeads)}) must equal num_attention_heads (${heads}) for MLA`,
    );
  }
  const params = (hf.rope_parameters ?? null) as Hf | null;
  const scalingRaw = (hf.rope_scaling ?? null) as Hf | null;
  const scaling = scalingRaw ?? params;
  const theta = optNum(hf, 'rope_theta') ?? (params ? optNum(params, 'rope_theta') : undefined) ?? 10000;
  let ropeScaling: YarnScaling | null = null;
  if (scaling) {
    const kind = (scaling.rope_type ?? scaling.type ?? 'default') as string;
    if (kind === 'yarn') {
      const factor = optNum(scaling, 'factor');
      const original = optNum(scaling, 'original_max_position_embeddings');
      if (original === undefined)
        throw new MLAConfigError("HF config: yarn rope scaling needs 'original_max_position_embeddings'");
      const maxPos = field(hf, 'max_position_embeddings') as number;
      ropeScaling = {
        type: 'yarn',
        factor: factor ?? maxPos / original,
        originalMaxPositionEmbeddings: original,
        betaFast: optNum(scaling, 'beta_fast') || 32,
        betaSlow: optNum(scaling, 'beta_slow') || 1,
        mscale: optNum(scaling, 'mscale'),
        mscaleAllDim: optNum(scaling, 'mscale_all_dim'),
      };
    } else if (kind !== 'default') {
      throw new MLAConfigError(`HF config: rope type '${kind}' is not supported (only default and yarn)`);
    }
  }
  return validateMlaConfig({
    hiddenSize: field(hf, 'hidden_size') as number,
    numHeads: heads,
    qLoraRank: qLora === null || qLora === undefined || qLora === 0 ? null : (qLora as number),
    kvLoraRank: field(hf, 'kv_lora_rank') as number,
    qkNopeHeadDim: nope,
    qkRopeHeadDim: rope,
    vHeadDim: field(hf, 'v_head_dim') as number,
    rmsNormEps: optNum(hf, 'rms_norm_eps') ?? 1e-6,
    ropeTheta: theta,
    maxPositionEmbeddings: field(hf, 'max_position_embeddings') as number,
    ropeScaling,
    ropeInterleave:
      hf.rope_interleave === undefined || hf.rope_interleave === null ? true : hf.rope_interleave === true,
  });
}
