// Parameter, KV-cache and FLOP accounting for a config (no weights needed): what MFU and memory
// planning use. V3's preset gives 671B total / 37B activated parameters for the main model.
import { isMoeLayer, type ModelConfig } from './config.js';

export interface ParameterCounts {
  embedding: number;
  attentionPerLayer: number;
  denseMlpPerLayer: number;
  moePerLayer: { routedExpert: number; shared: number; gate: number };
  norms: number;
  head: number;
  mtp: number;
  /** Main model (embedding, layers, final norm, head), without MTP modules. */
  total: number;
  /** Per token: everything but the routed experts that are not selected. */
  activated: number;
  /** Activated weights that take part in a matmul (no embedding gather, norms or biases): 2 FLOPs each per token. */
  activatedMatmul: number;
}

function attentionParams(c: ModelConfig): number {
  const qk = c.qkNopeHeadDim + c.qkRopeHeadDim;
  const q =
    c.qLoraRank === null
      ? c.hiddenSize * c.numHeads * qk
      : c.hiddenSize * c.qLoraRank + c.qLoraRank + c.qLoraRank * c.numHeads * qk;
  const kv =
    c.hiddenSize * (c.kvLoraRank + c.qkRopeHeadDim) +
    c.kvLoraRank +
    c.kvLoraRank * c.numHeads * (c.qkNopeHeadDim + c.vHeadDim);
  return q + kv + c.numHeads * c.vHeadDim * c.hiddenSize;
}

export function countParameters(c: ModelConfig): ParameterCounts {
  const h = c.hiddenSize;
  const attn = attentionParams(c);
  const dense = 3 * h * c.intermediateSize;
  const routedExpert = 3 * h * c.moeIntermediateSize;
  const shared = c.nSharedExperts * routedExpert;
  const gate = c.nRoutedExperts * h + c.nRoutedExperts; // weight + e_score_correction_bias
  const attnNorms = (c.qLoraRank ?? 0) + c.kvLoraRank;
  let total = 0;
  let activated = 0;
  let activatedMatmul = 0;
  for (let i = 0; i < c.numHiddenLayers; i++) {
    const moe = isMoeLayer(c, i);
    const layer = attn + 2 * h + (moe ? gate + shared : dense);
    total += layer + (moe ? c.nRoutedExperts * routedExpert : 0);
    activated += layer + (moe ? c.numExpertsPerTok * routedExpert : 0);
    activatedMatmul +=
      attn - attnNorms + (moe ? c.nRoutedExperts * h + shared + c.numExpertsPerTok * routedExpert : dense);
  }
  const embedding = c.vocabSize * h;
  const head = c.tieWordEmbeddings ? 0 : c.vocabSize * h;
  total += embedding + head + h;
  activated += embedding + head + h;
  activatedMatmul += c.vocabSize * h;
  // One MTP module: enorm, hnorm, eh_proj, a MoE decoder block, shared_head.norm (head/embedding shared).
  const mtpBlock = attn + 2 * h + gate + shared + c.nRoutedExperts * routedExpert;
  const mtp = c.numNextnPredictLayers * (3 * h + 2 * h * h + mtpBlock);
  return {
    embedding,
    attentionPerLayer: attn,
    denseMlpPerLayer: dense,
    moePerLayer: { routedExpert, shared, gate },
    norms: h,
    head,
    mtp,
    total,
    activated,
    activatedMatmul,
  };
}

/** Cached elements per token across all layers: MLA keeps (d_c + d_R) per layer. */
export function kvElementsPerToken(c: ModelConfig): number {
  return (c.kvLoraRank + c.qkRopeHeadDim) * c.numHiddenLayers;
}

export function kvBytesPerToken(c: ModelConfig, bytesPerElement = 2): number {
  return kvElementsPerToken(c) * bytesPerElement;
}

/**
 * Matmul FLOPs per token of a forward pass at context length `context` (attention over on average
 * context/2 keys when causal over a full sequence, `context` keys when decoding at that length).
 * Training is 3x forward (forward + backward for inputs and weights).
 */
export function flopsPerToken(
  c: ModelConfig,
  opts: { context: number; mode?: 'prefill' | 'decode' | 'train' },
): number {
  const mode = opts.mode ?? 'prefill';
  const linear = 2 * countParameters(c).activatedMatmul;
  const keys = mode === 'decode' ? opts.context : opts.context / 2;
  const attention = c.numHiddenLayers * 2 * c.numHeads * keys * (c.qkNopeHeadDim + c.qkRopeHeadDim + c.vHeadDim);
  const forward = linear + attention;
  return mode === 'train' ? 3 * forward : forward;
}
