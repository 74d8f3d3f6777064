// Loads what the server serves from a model directory: the checkpoint (@dsv3/model), its tokenizer
// (@dsv3/model's loadTokenizer over tokenizer.json / tokenizer_config.json), its chat template (or
// DeepSeek-V3's for a V3-vocabulary checkpoint that ships none), and an engine over a paged latent cache.
import { defaultBackend, noGrad, type Backend } from '@dsv3/core';
import {
  DEFAULT_WARMUP_TOKENS,
  loadModel,
  loadTokenizer,
  readConfig,
  warmupTokensWithin,
  type DeepseekV3ForCausalLM,
  type Tokenizer,
} from '@dsv3/model';
import { AsyncEngine, chatTemplateFor, EngineCore, ModelExecutor } from '@dsv3/serve';
import type { Served } from './app.js';

export interface LoadServedOptions {
  backend?: 'cpu' | 'webgpu';
  /** Projection weight storage (@dsv3/model's loadModel `weights`; 'f16' = WebGPU's f16 compute mode). */
  weights?: 'f32' | 'bf16' | 'f16' | 'fp8';
  /**
   * CPU: weights the checkpoint stores as they are kept map their pages from the file (loadModel's
   * `mapWeights`: a faster load, and processes serving the same file on one host share its pages);
   * 'auto' (the CLI's default) maps where the load keeps CPU weights.
   */
  mapWeights?: boolean | 'auto';
  maxNumSeqs?: number;
  maxNumBatchedTokens?: number;
  maxQueue?: number;
  /** Draft this many tokens per step with the checkpoint's MTP modules (0: off). */
  mtp?: number;
  /** Tokens the latent cache holds, all requests together (default 32768, at least maxModelLen). */
  kvCacheTokens?: number;
  /** Longest prompt + completion (default: the model's max_position_embeddings, at most the cache). */
  maxModelLen?: number;
  blockSize?: number;
  prefixCaching?: boolean;
  /** A tokenizer to use instead of the directory's. */
  tokenizer?: Tokenizer;
  /** Only the weights it accepts are read (loadModel's `keep`: an EP rank's own experts). */
  keep?: (name: string) => boolean;
  /**
   * CPU: tokens of the warm-up prefill at load (@dsv3/model's warmUp), so the first request runs at
   * steady speed; default 128 (at most max_position_embeddings - 1), 0: none. Skipped with `keep` (a rank
   * holding part of the model cannot run a forward alone).
   */
  warmupTokens?: number;
}

/** The warm-up tokens loadModel gets: the CPU, the whole model, within the checkpoint's positions. */
export function servedWarmupTokens(dir: string, opts: LoadServedOptions): number {
  if ((opts.backend ?? 'cpu') !== 'cpu' || opts.keep) return 0;
  return warmupTokensWithin(readConfig(dir), opts.warmupTokens ?? DEFAULT_WARMUP_TOKENS);
}

async function backendFor(name: 'cpu' | 'webgpu'): Promise<Backend> {
  if (name === 'cpu') return defaultBackend();
  const { createNodeWebGpuBackend } = await import('@dsv3/core/node');
  return createNodeWebGpuBackend();
}

/** The checkpoint, its tokenizer and an engine core over a paged latent cache (one per process). */
export async function loadEngineCore(
  dir: string,
  opts: LoadServedOptions = {},
): Promise<{ model: DeepseekV3ForCausalLM; tokenizer: Tokenizer; core: EngineCore }> {
  const backend = await backendFor(opts.backend ?? 'cpu');
  const model = noGrad(() =>
    loadModel(dir, {
      backend,
      ...(opts.weights && { weights: opts.weights }),
      ...(opts.mapWeights !== undefined && { mapWeights: opts.mapWeights }),
      ...(opts.keep && { keep: opts.keep }),
      warmupTokens: servedWarmupTokens(dir, opts),
      // the engine samples from the step's logits: no screened copy of the head (model.greedyStep's)
      screenHead: false,
    }),
  );
  const tokenizer = opts.tokenizer ?? (await loadTokenizer(dir));
  if (tokenizer.vocabSize > model.config.vocabSize)
    throw new Error(
      `the tokenizer's vocabulary (${tokenizer.vocabSize}) is larger than the model's (${model.config.vocabSize})`,
    );
  const mtp = opts.mtp ?? 0;
  if (mtp > 0 && model.mtp.length === 0) throw new Error(`--mtp ${mtp}: the checkpoint has no MTP module`);
  if (mtp > 1) throw new Error(`--mtp ${mtp}: one MTP module drafts one token per step; use --mtp 1`);
  const maxModelLen = opts.maxModelLen ?? model.config.maxPositionEmbeddings;
  const blockSize = opts.blockSize ?? 16;
  const tokens = Math.max(opts.kvCacheTokens ?? 32768, maxModelLen + (mtp + 1) * blockSize);
  const cache = model.newCache(tokens, { blockSize });
  const executor = new ModelExecutor(model, cache);
  const eos = new Set<number>(model.config.eosTokenIds);
  if (tokenizer.eosTokenId !== null) eos.add(tokenizer.eosTokenId);
  const core = new EngineCore(executor, {
    maxRunningSeqs: opts.maxNumSeqs ?? 64,
    maxBatchedTokens: opts.maxNumBatchedTokens ?? 512,
    prefixCaching: opts.prefixCaching ?? mtp === 0,
    eosTokenIds: [...eos],
    maxModelLen: Math.min(maxModelLen, model.config.maxPositionEmbeddings),
    vocabLimit: tokenizer.vocabSize,
    speculativeTokens: mtp,
  });
  return { model, tokenizer, core };
}

export async function loadServed(dir: string, opts: LoadServedOptions = {}): Promise<Served> {
  const { tokenizer, core } = await loadEngineCore(dir, opts);
  return {
    engine: new AsyncEngine(core, tokenizer, { maxQueue: opts.maxQueue ?? 256 }),
    chatTemplate: chatTemplateFor(tokenizer, dir),
  };
}
