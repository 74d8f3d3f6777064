// Writes an FP8 copy of a BF16 / F32 checkpoint in DeepSeek-V3's published format: every projection
// the format quantizes as E4M3 bytes with 128x128 `weight_scale_inv` blocks (quantized from the stored
// values, as `loadModel(dir, { weights: 'fp8' })` quantizes them at load), everything else as stored,
// and `quantization_config` in config.json. For load-time comparisons at the file size an FP8 model
// ships at (docs/benchmarks.md, issue 13). Holds the output in memory: for benchmark-sized checkpoints.
// usage: tsx --conditions=@dsv3/source bench/make-fp8-checkpoint.ts SRC_DIR OUT_DIR
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cast, fromRaw, readShardedCheckpoint, type SafetensorsWritable, writeShardedCheckpoint } from '@dsv3/core';
import { quantizeWeight } from '@dsv3/fp8';
import { checkpointSpecs, readConfig } from '../src/index.js';

const [src, out] = process.argv.slice(2);
if (!src || !out) throw new Error('usage: make-fp8-checkpoint.ts SRC_DIR OUT_DIR');
if (existsSync(out) && readdirSync(out).length > 0) throw new Error(`${out} exists and is not empty`);
const config = readConfig(src);
if (config.quantization) throw new Error(`${src} is already quantized (${JSON.stringify(config.quantization)})`);
const quantizable = new Set(
  checkpointSpecs(config, { mtp: config.numNextnPredictLayers > 0 })
    .filter((s) => s.quantizable)
    .map((s) => s.name),
);
const ckpt = readShardedCheckpoint(src);
const tensors: Record<string, SafetensorsWritable> = {};
try {
  for (const name of ckpt.names()) {
    const t = ckpt.get(name);
    if (!quantizable.has(name)) {
      tensors[name] = { dtype: t.dtype, shape: t.shape, data: t.data };
      continue;
    }
    const w = cast(fromRaw(t.dtype, t.shape, t.data), 'f32').dataSync() as Float32Array;
    const q = quantizeWeight(w, t.shape as [number, number], { block: 128 });
    tensors[name] = { dtype: 'fp8-e4m3', shape: t.shape, data: q.q };
    tensors[name.replace(/weight$/, 'weight_scale_inv')] = { dtype: 'f32', shape: [...q.scaleShape], data: q.scales };
  }
} finally {
  ckpt.close();
}
mkdirSync(out, { recursive: true });
writeShardedCheckpoint(out, tensors);
const hf = JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
hf.quantization_config = {
  quant_method: 'fp8',
  fmt: 'e4m3',
  activation_scheme: 'dynamic',
  weight_block_size: [128, 128],
};
writeFileSync(join(out, 'config.json'), JSON.stringify(hf, null, 2));
for (const f of readdirSync(src))
  if (f.startsWith('tokenizer') || f === 'generation_config.json') copyFileSync(join(src, f), join(out, f));
console.log(`wrote ${out}: ${Object.keys(tensors).length} tensors`);
