// The checkpoint layout of a config: every tensor name the published Hugging Face DeepSeek-V3
// weights use, with its shape, and a validator that reports every mismatch of a checkpoint at once.
import { isMoeLayer, type ModelConfig } from './config.js';

export interface TensorSpec {
  name: string;
  shape: number[];
  /** A projection that FP8 checkpoints store as e4m3 `weight` + f32 `weight_scale_inv`. */
  quantizable: boolean;
}

export interface CheckpointEntry {
  dtype: string;
  shape: readonly number[];
}

function attention(c: ModelConfig, p: string): TensorSpec[] {
  const qk = c.qkNopeHeadDim + c.qkRopeHeadDim;
  const h = c.hiddenSize;
  const q: TensorSpec[] =
    c.qLoraRank === null
      ? [{ name: `${p}q_proj.weight`, shape: [c.numHeads * qk, h], quantizable: true }]
      : [
          { name: `${p}q_a_proj.weight`, shape: [c.qLoraRank, h], quantizable: true },
          { name: `${p}q_a_layernorm.weight`, shape: [c.qLoraRank], quantizable: false },
          { name: `${p}q_b_proj.weight`, shape: [c.numHeads * qk, c.qLoraRank], quantizable: true },
        ];
  return [
    ...q,
    { name: `${p}kv_a_proj_with_mqa.weight`, shape: [c.kvLoraRank + c.qkRopeHeadDim, h], quantizable: true },
    { name: `${p}kv_a_layernorm.weight`, shape: [c.kvLoraRank], quantizable: false },
    {
      name: `${p}kv_b_proj.weight`,
      shape: [c.numHeads * (c.qkNopeHeadDim + c.vHeadDim), c.kvLoraRank],
      quantizable: true,
    },
    { name: `${p}o_proj.weight`, shape: [h, c.numHeads * c.vHeadDim], quantizable: true },
  ];
}

function swiglu(p: string, dim: number, hidden: number): TensorSpec[] {
  return [
    { name: `${p}gate_proj.weight`, shape: [hidden, dim], quantizable: true },
    { name: `${p}up_proj.weight`, shape: [hidden, dim], quantizable: true },
    { name: `${p}down_proj.weight`, shape: [dim, hidden], quantizable: true },
  ];
}

/** The tensors of decoder layer `i` (MoE or dense by the config) under `prefix` (e.g. "model.layers.3."). */
export function decoderLayerSpecs(c: ModelConfig, i: number, prefix: string): TensorSpec[] {
  const h = c.hiddenSize;
  const norms: TensorSpec[] = [
    { name: `${prefix}input_layernorm.weight`, shape: [h], quantizable: false },
    { name: `${prefix}post_attention_layernorm.weight`, shape: [h], quantizable: false },
  ];
  const mlp: TensorSpec[] = !isMoeLayer(c, i)
    ? swiglu(`${prefix}mlp.`, h, c.intermediateSize)
    : [
        { name: `${prefix}mlp.gate.weight`, shape: [c.nRoutedExperts, h], quantizable: false },
        ...(c.topkMethod === 'noaux_tc'
          ? [{ name: `${prefix}mlp.gate.e_score_correction_bias`, shape: [c.nRoutedExperts], quantizable: false }]
          : []),
        ...Array.from({ length: c.nRoutedExperts }, (_, e) =>
          swiglu(`${prefix}mlp.experts.${e}.`, h, c.moeIntermediateSize),
        ).flat(),
        ...(c.nSharedExperts > 0
          ? swiglu(`${prefix}mlp.shared_experts.`, h, c.moeIntermediateSize * c.nSharedExperts)
          : []),
      ];
  return [...norms, ...attention(c, `${prefix}self_attn.`), ...mlp];
}

/** Every tensor of the checkpoint, MTP modules (layers num_hidden_layers + k) included when asked. */
export function checkpointSpecs(c: ModelConfig, opts: { mtp?: boolean } = {}): TensorSpec[] {
  const h = c.hiddenSize;
  const specs: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [c.vocabSize, h], quantizable: false }];
  for (let i = 0; i < c.numHiddenLayers; i++) specs.push(...decoderLayerSpecs(c, i, `model.layers.${i}.`));
  specs.push({ name: 'model.norm.weight', shape: [h], quantizable: false });
  if (!c.tieWordEmbeddings) specs.push({ name: 'lm_head.weight', shape: [c.vocabSize, h], quantizable: false });
  if (opts.mtp ?? true) {
    for (let k = 0; k < c.numNextnPredictLayers; k++) {
      const i = c.numHiddenLayers + k;
      const p = `model.layers.${i}.`;
      specs.push(
        { name: `${p}enorm.weight`, shape: [h], quantizable: false },
        { name: `${p}hnorm.weight`, shape: [h], quantizable: false },
        { name: `${p}eh_proj.weight`, shape: [h, 2 * h], quantizable: false },
        { name: `${p}shared_head.norm.weight`, shape: [h], quantizable: false },
        { name: `${p}shared_head.head.weight`, shape: [c.vocabSize, h], quantizable: false },
        { name: `${p}embed_tokens.weight`, shape: [c.vocabSize, h], quantizable: false },
        ...decoderLayerSpecs(c, i, p),
      );
    }
  }
  return specs;
}

const FLOAT_DTYPES = ['bf16', 'f16', 'f32', 'BF16', 'F16', 'F32'];

export class CheckpointMismatchError extends Error {
  override name = 'CheckpointMismatchError';
  constructor(readonly problems: string[]) {
    super(
      `checkpoint does not match the config (nothing was loaded), ${problems.length} problem(s):\n  ${problems.slice(0, 50).join('\n  ')}${problems.length > 50 ? `\n  … and ${problems.length - 50} more` : ''}`,
    );
  }
}

/**
 * Checks a checkpoint's tensor table against the config. FP8 checkpoints (config with
 * quantization_config) must store each quantizable projection as fp8 with its block scales.
 */
export function validateCheckpoint(
  c: ModelConfig,
  entries: ReadonlyMap<string, CheckpointEntry>,
  opts: { mtp?: boolean } = {},
): void {
  const problems: string[] = [];
  const expected = new Set<string>();
  const fmtShape = (s: readonly number[]): string => `[${s.join(', ')}]`;
  for (const spec of checkpointSpecs(c, opts)) {
    expected.add(spec.name);
    const e = entries.get(spec.name);
    if (!e) {
      problems.push(`${spec.name}: missing (expected ${fmtShape(spec.shape)})`);
      continue;
    }
    if (e.shape.length !== spec.shape.length || e.shape.some((d, i) => d !== spec.shape[i]))
      problems.push(`${spec.name}: shape ${fmtShape(e.shape)}, expected ${fmtShape(spec.shape)}`);
    const fp8 = e.dtype === 'fp8-e4m3' || e.dtype === 'F8_E4M3';
    if (fp8 && !(spec.quantizable && c.quantization))
      problems.push(
        `${spec.name}: stored as fp8 but ${spec.quantizable ? 'the config has no quantization_config' : 'this tensor is never quantized'}`,
      );
    if (!fp8 && !FLOAT_DTYPES.includes(e.dtype))
      problems.push(`${spec.name}: dtype ${e.dtype}, expected a float (bf16/f16/f32)`);
    if (fp8) {
      const scaleName = spec.name.replace(/weight$/, 'weight_scale_inv');
      expected.add(scaleName);
      const [bo, bi] = c.quantization!.blockSize;
      const want = [Math.ceil(spec.shape[0]! / bo), Math.ceil(spec.shape[1]! / bi)];
      const s = entries.get(scaleName);
      if (!s) problems.push(`${scaleName}: missing (fp8 weight without its scales)`);
      else if (s.shape.length !== 2 || s.shape[0] !== want[0] || s.shape[1] !== want[1])
        problems.push(`${scaleName}: shape ${fmtShape(s.shape)}, expected ${fmtShape(want)}`);
    }
  }
  for (const name of entries.keys()) if (!expected.has(name)) problems.push(`${name}: unexpected tensor`);
  if (problems.length) throw new CheckpointMismatchError(problems);
}
