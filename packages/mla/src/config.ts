// MLA configuration: the camelCase config this package uses, its validation, and the conversion
// from a Hugging Face `deepseek_v3` / `deepseek_v2` config (snake_case fields).

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

function posInt(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new MLAConfigError(`MLA config: ${name} must be a positive integer, got ${JSON.stringify(v)}`);
  return v;
}

function posNum(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new MLAConfigError(`MLA config: ${name} must be a positive number, got ${JSON.stringify(v)}`);
  return v;
}

/** Checks a config and returns it with defaults filled in (throws MLAConfigError with the field name). */
export function validateMlaConfig(c: MLAConfig): MLAConfig {
  if (c === null || typeof c !== 'object') throw new MLAConfigError('MLA config must be an object');
  posInt('hiddenSize', c.hiddenSize);
  posInt('numHeads', c.numHeads);
  if (c.qLoraRank !== null) posInt('qLoraRank (or null)', c.qLoraRank);
  posInt('kvLoraRank', c.kvLoraRank);
  posInt('qkNopeHeadDim', c.qkNopeHeadDim);
  posInt('qkRopeHeadDim', c.qkRopeHeadDim);
  if (c.qkRopeHeadDim % 2 !== 0) throw new MLAConfigError(`MLA config: qkRopeHeadDim must be even (RoPE rotates pairs), got ${c.qkRopeHeadDim}`);
  posInt('vHeadDim', c.vHeadDim);
  posNum('rmsNormEps', c.rmsNormEps);
  posNum('ropeTheta', c.ropeTheta);
  posInt('maxPositionEmbeddings', c.maxPositionEmbeddings);
  let ropeScaling: YarnScaling | null = null;
  if (c.ropeScaling) {
    const s = c.ropeScaling;
    if (s.type !== 'yarn') throw new MLAConfigError(`MLA config: ropeScaling.type must be 'yarn', got ${JSON.stringify(s.type)}`);
    posNum('ropeScaling.factor', s.factor);
    posInt('ropeScaling.originalMaxPositionEmbeddings', s.originalMaxPositionEmbeddings);
    const betaFast = s.betaFast ?? 32;
    const betaSlow = s.betaSlow ?? 1;
    posNum('ropeScaling.betaFast', betaFast);
    posNum('ropeScaling.betaSlow', betaSlow);
    if (s.mscale !== undefined && (typeof s.mscale !== 'number' || !Number.isFinite(s.mscale))) throw new MLAConfigError(`MLA config: ropeScaling.mscale must be a number, got ${JSON.stringify(s.mscale)}`);
    if (s.mscaleAllDim !== undefined && (typeof s.mscaleAllDim !== 'number' || !Number.isFinite(s.mscaleAllDim))) {
      throw new MLAConfigError(`MLA config: ropeScaling.mscaleAllDim must be a number, got ${JSON.stringify(s.mscaleAllDim)}`);
    }
    ropeScaling = { ...s, betaFast, betaSlow };
  }
  return { ...c, ropeScaling, ropeInterleave: c.ropeInterleave ?? true };
}

type Hf = Record<string, unknown>;

function field(hf: Hf, name: string): unknown {
  if (!(name in hf)) throw new MLAConfigError(`HF config: missing field '${name}'`);
  return hf[name];
}

function optNum(o: Hf, name: string): number | undefined {
  const v = o[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number') throw new MLAConfigError(`HF config: '${name}' must be a number, got ${JSON.stringify(v)}`);
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
  if (hf['attention_bias'] === true) throw new MLAConfigError('HF config: attention_bias = true is not supported (DeepSeek-V2/V3 attention has no biases)');
  const qLora = hf['q_lora_rank'];
  const nope = field(hf, 'qk_nope_head_dim') as number;
  const rope = field(hf, 'qk_rope_head_dim') as number;
  if (hf['qk_head_dim'] !== undefined && hf['qk_head_dim'] !== nope + rope) {
    throw new MLAConfigError(`HF config: qk_head_dim ${JSON.stringify(hf['qk_head_dim'])} != qk_nope_head_dim + qk_rope_head_dim (${nope} + ${rope})`);
  }
  const heads = field(hf, 'num_attention_heads') as number;
  const kvHeads = hf['num_key_value_heads'];
  if (kvHeads !== undefined && kvHeads !== null && kvHeads !== heads) {
    throw new MLAConfigError(`HF config: num_key_value_heads (${JSON.stringify(kvHeads)}) must equal num_attention_heads (${heads}) for MLA`);
  }
  const params = (hf['rope_parameters'] ?? null) as Hf | null;
  const scalingRaw = (hf['rope_scaling'] ?? null) as Hf | null;
  const scaling = scalingRaw ?? params;
  const theta = optNum(hf, 'rope_theta') ?? (params ? optNum(params, 'rope_theta') : undefined) ?? 10000;
  let ropeScaling: YarnScaling | null = null;
  if (scaling) {
    const kind = (scaling['rope_type'] ?? scaling['type'] ?? 'default') as string;
    if (kind === 'yarn') {
      const factor = optNum(scaling, 'factor');
      const original = optNum(scaling, 'original_max_position_embeddings');
      if (original === undefined) throw new MLAConfigError("HF config: yarn rope scaling needs 'original_max_position_embeddings'");
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
    ropeInterleave: hf['rope_interleave'] === undefined || hf['rope_interleave'] === null ? true : hf['rope_interleave'] === true,
  });
}
