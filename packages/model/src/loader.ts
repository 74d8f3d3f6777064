// Loading and saving Hugging Face DeepSeek-V3 checkpoints (single file or sharded) under the
// published names: everything is validated first (one error listing every problem), then loaded.
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { cast, fromRaw, Linear, readShardedCheckpoint, writeFileAtomic, writeShardedCheckpoint, type Backend, type ShardedCheckpoint, type Tensor } from '@dsv3/core';
import { dequantizeWeight, FP8Linear } from '@dsv3/fp8';
import { MoE } from '@dsv3/moe';
import { mtpToCheckpointName } from '@dsv3/mtp';
import { parseConfig, toHfConfig, type ModelConfig } from './config.js';
import { DeepseekV3ForCausalLM, type ModelOptions } from './model.js';
import { CheckpointMismatchError, validateCheckpoint, type CheckpointEntry } from './weights.js';

/** Module state-dict name → checkpoint name (MTP module k lives at model.layers.{L + k}). */
export function checkpointName(config: ModelConfig, name: string): string {
  return name.startsWith('mtp.') ? mtpToCheckpointName(name, { numHiddenLayers: config.numHiddenLayers, localPrefix: 'mtp.' }) : name;
}

export interface LoadOptions extends Omit<ModelOptions, 'seed' | 'std'> {
  /**
   * FP8 checkpoints: 'dequantize' (default) widens each weight on load (q · scale); 'w8a8' keeps the
   * projections in FP8 and runs them as block-scaled GEMMs on activations quantized online (1x128),
   * as DeepSeek's inference code does. Parameters still hold the dequantized weights (the absorbed MLA
   * folds kv_b_proj from them, as DeepSeek's code does).
   */
  fp8?: 'dequantize' | 'w8a8';
}

function readConfig(dir: string): ModelConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  } catch (e) {
    throw new Error(`cannot read ${join(dir, 'config.json')}: ${(e as Error).message}`);
  }
  return parseConfig(raw);
}

function entriesOf(ckpt: ShardedCheckpoint): Map<string, CheckpointEntry> {
  return new Map(ckpt.names().map((n) => [n, { dtype: String(ckpt.info(n).dtype), shape: ckpt.info(n).shape }]));
}

/** Reads one weight as a tensor of `dtype` on `backend`, dequantizing fp8 with its block scales. */
function readWeight(ckpt: ShardedCheckpoint, name: string, config: ModelConfig, dtype: 'f32' | 'f64' | 'bf16' | 'f16', backend?: Backend): Tensor {
  const t = ckpt.get(name);
  if (t.dtype === 'fp8-e4m3') {
    const s = ckpt.get(name.replace(/weight$/, 'weight_scale_inv'));
    const [out, inp] = t.shape as [number, number];
    const w = dequantizeWeight(t.data as Uint8Array, s.data as Float32Array, [out, inp], { block: config.quantization?.blockSize[0] ?? 128 });
    return cast(fromRaw('f32', t.shape, w, backend), dtype);
  }
  return cast(fromRaw(t.dtype, t.shape, t.data, backend), dtype);
}

/**
 * Loads a checkpoint directory (config.json + model.safetensors or a sharded index) into a model.
 * Missing or unexpected tensors, wrong shapes or dtypes and truncated files all fail before anything
 * is loaded.
 */
export function loadModel(dir: string, opts: LoadOptions = {}): DeepseekV3ForCausalLM {
  const config = readConfig(dir);
  const ckpt = readShardedCheckpoint(dir);
  try {
    validateCheckpoint(config, entriesOf(ckpt), { mtp: true });
    const dtype = (opts.dtype ?? 'f32') as 'f32';
    const model = new DeepseekV3ForCausalLM(config, { ...opts, dtype });
    const state: Record<string, Tensor> = {};
    for (const name of Object.keys(model.stateDict())) state[name] = readWeight(ckpt, checkpointName(config, name), config, dtype, opts.backend);
    // The MTP layers also store copies of the embedding and head; V3 keeps them equal to the main ones.
    model.loadStateDict(state);
    if (opts.fp8 === 'w8a8') useFp8Projections(model, ckpt, opts.backend);
    return model;
  } finally {
    ckpt.close();
  }
}

/** Routes every Linear whose checkpoint weight is fp8 through a W8A8 FP8Linear over those bytes. */
function useFp8Projections(model: DeepseekV3ForCausalLM, ckpt: ShardedCheckpoint, backend?: Backend): void {
  for (const [name, mod] of model.namedModules()) {
    // Routed experts normally run as grouped GEMMs over their weights; make them call their layers.
    if (mod instanceof MoE) mod.expertsAsModules = true;
    if (!(mod instanceof Linear)) continue;
    const wName = checkpointName(model.config, `${name}.weight`);
    const w = ckpt.get(wName);
    if (w.dtype !== 'fp8-e4m3') continue;
    const s = ckpt.get(wName.replace(/weight$/, 'weight_scale_inv'));
    const fp8 = FP8Linear.fromCheckpoint(fromRaw(w.dtype, w.shape, w.data, backend), fromRaw(s.dtype, s.shape, s.data, backend), {
      block: model.config.quantization!.blockSize[0],
      scaleFormat: model.config.quantization!.scaleFormat,
    });
    mod.forward = (x: Tensor): Tensor => fp8.forward(x);
  }
}

/** Writes config.json and the weights (bf16 by default, as published) in the same layout, atomically per file. */
export async function saveModel(model: DeepseekV3ForCausalLM, dir: string, opts: { dtype?: 'bf16' | 'f32'; maxShardBytes?: number } = {}): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const dtype = opts.dtype ?? 'bf16';
  const tensors: Record<string, { dtype: Tensor['dtype']; shape: readonly number[]; data: Awaited<ReturnType<Tensor['raw']>> }> = {};
  const put = async (name: string, t: Tensor): Promise<void> => {
    const c = cast(t, dtype);
    tensors[name] = { dtype: c.dtype, shape: c.shape, data: await c.raw() };
  };
  for (const [name, t] of Object.entries(model.stateDict())) await put(checkpointName(model.config, name), t);
  for (let k = 0; k < model.mtp.length; k++) {
    const p = `model.layers.${model.config.numHiddenLayers + k}.`;
    await put(`${p}embed_tokens.weight`, model.model.embedTokens.weight.value);
    await put(`${p}shared_head.head.weight`, model.lmHead.weight.value);
  }
  writeShardedCheckpoint(dir, tensors, opts.maxShardBytes ? { maxShardBytes: opts.maxShardBytes } : {});
  const config = JSON.stringify({ ...toHfConfig(model.config), torch_dtype: dtype === 'bf16' ? 'bfloat16' : 'float32' }, null, 2);
  writeFileAtomic(join(dir, 'config.json'), [new TextEncoder().encode(config)]);
}

export { CheckpointMismatchError };
