// Builds the model and tokenizer a training config names.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Backend } from '@dsv3/core';
import {
  byteLevelTokenizer,
  DeepseekV3ForCausalLM,
  deepseekV3Tokenizer,
  loadModel,
  loadTokenizer,
  parseConfig,
  toHfConfig,
  type ModelConfig,
  type Tokenizer,
} from '@dsv3/model';
import type { TrainConfig } from './config.js';
import { PRESET_MODELS } from './presets.js';

function readJson(path: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
}

/** The HF config.json object the config's model has (preset or file, with overrides and MTP depth). */
export function modelHfConfig(cfg: TrainConfig): Record<string, unknown> {
  const m = cfg.model;
  if (m.checkpoint) return readJson(join(m.checkpoint, 'config.json'));
  const base = m.preset ? { ...PRESET_MODELS[m.preset] } : readJson(m.config!);
  return { ...base, ...m.overrides, num_nextn_predict_layers: cfg.mtp.depth };
}

export function modelConfigOf(cfg: TrainConfig): ModelConfig {
  const config = parseConfig(modelHfConfig(cfg));
  if (config.numNextnPredictLayers !== cfg.mtp.depth) {
    throw new Error(
      `mtp.depth is ${cfg.mtp.depth} but the checkpoint ${cfg.model.checkpoint} has ${config.numNextnPredictLayers} MTP module(s) (num_nextn_predict_layers)`,
    );
  }
  return config;
}

/** A fresh model (preset/config) or the weights of model.checkpoint, in f32 master weights. */
export function buildModel(cfg: TrainConfig, backend?: Backend): DeepseekV3ForCausalLM {
  const config = modelConfigOf(cfg);
  if (cfg.model.checkpoint) return loadModel(cfg.model.checkpoint, { backend, dtype: 'f32' });
  return new DeepseekV3ForCausalLM(config, {
    backend,
    seed: cfg.seed,
    ...(cfg.model.initStd !== undefined && { std: cfg.model.initStd }),
  });
}

export async function buildTokenizer(cfg: TrainConfig, config: ModelConfig): Promise<Tokenizer> {
  const t = cfg.tokenizer;
  let tok: Tokenizer;
  if (t === 'byte-level') tok = byteLevelTokenizer();
  else if (t === 'deepseek-v3') tok = await deepseekV3Tokenizer();
  else if (t === 'checkpoint') {
    if (!cfg.model.checkpoint)
      throw new Error(
        'tokenizer "checkpoint" needs model.checkpoint; choose "byte-level", "deepseek-v3" or { "dir": ... }',
      );
    tok = await loadTokenizer(cfg.model.checkpoint);
  } else tok = await loadTokenizer(t.dir);
  if (tok.vocabSize > config.vocabSize)
    throw new Error(`the tokenizer has ${tok.vocabSize} tokens but the model's vocab_size is ${config.vocabSize}`);
  return tok;
}

/** Two configs describe the same architecture (for --resume checks): the differing keys, if any. */
export function architectureDiff(a: ModelConfig, b: ModelConfig): string[] {
  const ha = toHfConfig(a) as Record<string, unknown>;
  const hb = toHfConfig(b) as Record<string, unknown>;
  const keys = new Set([...Object.keys(ha), ...Object.keys(hb)]);
  return [...keys]
    .filter((k) => JSON.stringify(ha[k]) !== JSON.stringify(hb[k]))
    .map((k) => `${k}: ${JSON.stringify(ha[k])} vs ${JSON.stringify(hb[k])}`);
}
