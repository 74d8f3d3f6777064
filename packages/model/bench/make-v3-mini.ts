// Writes the V3-shaped benchmark checkpoint in Node (same config, names, shapes and bf16 storage as
// ../shared/scripts/make-v3-mini.py, random values from core's Rng instead of torch's), for machines
// without torch. usage: tsx --conditions=@dsv3/source bench/make-v3-mini.ts OUT_DIR [--no-mtp] [--fp8]
// --fp8 also writes OUT_DIR-fp8: every projection as E4M3 with 128x128 block scales (DeepSeek-V3's format).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeBf16, Rng, writeSafetensors } from '@dsv3/core';
import { quantizeWeight } from '@dsv3/fp8';
import { checkpointSpecs, parseConfig, PRESETS } from '../src/index.js';

const args = process.argv.slice(2);
const out = args.find((a) => !a.startsWith('--'));
if (!out) throw new Error('usage: make-v3-mini.ts OUT_DIR [--no-mtp] [--fp8]');
const hf = {
  architectures: ['DeepseekV3ForCausalLM'],
  ...PRESETS['v3-mini'],
  topk_method: 'noaux_tc',
  hidden_act: 'silu',
  rms_norm_eps: 1e-6,
  tie_word_embeddings: false,
  attention_bias: false,
  torch_dtype: 'bfloat16',
  num_nextn_predict_layers: args.includes('--no-mtp') ? 0 : 1,
};
const config = parseConfig(hf);
const rng = new Rng(0);
type Entry = { dtype: 'bf16' | 'f32' | 'fp8-e4m3'; shape: number[]; data: Uint16Array | Float32Array | Uint8Array };
const f32: Record<string, { shape: number[]; data: Float32Array }> = {};
for (const spec of checkpointSpecs(config, { mtp: true })) {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const v = new Float32Array(n);
  const name = spec.name;
  if (name.endsWith('e_score_correction_bias')) rng.fillNormal(v, 0, 0.05);
  else if (spec.shape.length === 1)
    rng.fillNormal(v, 1, 0.1); // norms
  else if (name.endsWith('embed_tokens.weight')) rng.fillNormal(v, 0, 1);
  else rng.fillNormal(v, 0, 1 / Math.sqrt(spec.shape[1]!));
  f32[name] = { shape: spec.shape, data: v };
}
// The MTP module's embedding and head are copies of the main ones, as in DeepSeek-V3's checkpoint.
const L = config.numHiddenLayers;
if (config.numNextnPredictLayers > 0) {
  f32[`model.layers.${L}.embed_tokens.weight`] = f32['model.embed_tokens.weight']!;
  f32[`model.layers.${L}.shared_head.head.weight`] = f32['lm_head.weight']!;
}

function write(dir: string, tensors: Record<string, Entry>, cfg: object): void {
  mkdirSync(dir, { recursive: true });
  writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  console.log(`wrote ${dir}: ${Object.keys(tensors).length} tensors`);
}

const bf16: Record<string, Entry> = {};
for (const [name, t] of Object.entries(f32)) {
  bf16[name] = name.endsWith('e_score_correction_bias')
    ? { dtype: 'f32', shape: t.shape, data: t.data }
    : { dtype: 'bf16', shape: t.shape, data: encodeBf16(t.data) };
}
write(out, bf16, hf);

if (args.includes('--fp8')) {
  const quantizable = new Set(
    checkpointSpecs(config, { mtp: true })
      .filter((s) => s.quantizable)
      .map((s) => s.name),
  );
  const fp8: Record<string, Entry> = {};
  for (const [name, t] of Object.entries(bf16)) {
    if (!quantizable.has(name)) {
      fp8[name] = t;
      continue;
    }
    const q = quantizeWeight(f32[name]!.data, t.shape as [number, number], { block: 128 });
    fp8[name] = { dtype: 'fp8-e4m3', shape: t.shape, data: q.q };
    fp8[name.replace(/weight$/, 'weight_scale_inv')] = { dtype: 'f32', shape: [...q.scaleShape], data: q.scales };
  }
  const qc = { quant_method: 'fp8', fmt: 'e4m3', activation_scheme: 'dynamic', weight_block_size: [128, 128] };
  write(`${out}-fp8`, fp8, { ...hf, quantization_config: qc });
}
