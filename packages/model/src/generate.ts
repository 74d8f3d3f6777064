// Text generation through the absorbed MLA latent cache: batched prefill + decode with greedy or
// seeded sampling (temperature, top-k, top-p) on the device, so a step reads back only the sampled
// ids; or MTP speculative decoding (@dsv3/mtp) per sequence.
import { noGradAsync, reshape, tensor, type Tensor } from '@dsv3/core';
import type { PagedLatentCache } from '@dsv3/mla';
import {
  AcceptanceStats,
  checkSampling,
  isGreedy,
  readTokens,
  sampleTokens,
  samplingTensors,
  generate as speculativeGenerate,
  type SamplingOptions,
  type SpeculativeModel,
  type StepOutput,
} from '@dsv3/mtp';
import type { DeepseekV3ForCausalLM } from './model.js';

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens: number;
  seed?: number;
  /** Stop a row at these tokens (default: the config's eos ids; [] to never stop early). */
  stopTokens?: readonly number[];
  /** Draft this many tokens per step with the MTP modules and verify them in one forward (0: off). */
  mtpDraftTokens?: number;
  /** Tokens per cache page (default 16). */
  blockSize?: number;
}

export interface GenerateOutput {
  /** Each row: its prompt followed by the generated tokens. */
  ids: number[][];
  /** Generated tokens per row. */
  newTokens: number[][];
  /** Speculative decoding statistics (when MTP drafting was on). */
  stats?: AcceptanceStats;
}

/** The model over one latent cache, as speculative decoding needs it (a sequence is a cache sequence id). */
export class CachedModel implements SpeculativeModel<number> {
  constructor(
    readonly model: DeepseekV3ForCausalLM,
    readonly cache: PagedLatentCache,
  ) {}
  get vocabSize(): number {
    return this.model.config.vocabSize;
  }
  get numMtpModules(): number {
    return this.model.mtp.length;
  }
  private rows(r: { logits: Tensor; hidden: Tensor }, n: number): StepOutput {
    return {
      logits: reshape(r.logits, [n, this.vocabSize]),
      hidden: reshape(r.hidden, [n, this.model.config.hiddenSize]),
    };
  }
  async forward(seq: number, tokens: readonly number[]): Promise<StepOutput> {
    return this.rows(this.model.step(this.cache, [seq], ids(this.model, [tokens])), tokens.length);
  }
  truncate(seq: number, length: number): void {
    for (let l = 0; l < this.model.config.numHiddenLayers; l++) this.cache.truncateLayer(seq, l, length);
  }
  async draft(seq: number, depth: number, hidden: Tensor, tokens: readonly number[]): Promise<StepOutput> {
    const h = reshape(hidden, [1, tokens.length, this.model.config.hiddenSize]);
    return this.rows(this.model.mtpStep(this.cache, [seq], depth, h, ids(this.model, [tokens])), tokens.length);
  }
  truncateDraft(seq: number, depth: number, length: number): void {
    this.cache.truncateLayer(seq, this.model.config.numHiddenLayers + depth, length);
  }
}

/** Token ids [rows, n] as an i32 tensor on the model's backend. */
function ids(model: DeepseekV3ForCausalLM, rows: readonly (readonly number[])[]): Tensor {
  return tensor(Int32Array.from(rows.flat()), {
    shape: [rows.length, rows[0]!.length],
    dtype: 'i32',
    backend: model.backend,
  });
}

function checkPrompts(
  model: DeepseekV3ForCausalLM,
  prompts: readonly (readonly number[])[],
  opts: GenerateOptions,
): void {
  const c = model.config;
  if (!prompts.length) throw new RangeError('generate: no prompts');
  if (!(Number.isInteger(opts.maxNewTokens) && opts.maxNewTokens >= 0))
    throw new RangeError(`generate: maxNewTokens must be a non-negative integer, got ${opts.maxNewTokens}`);
  prompts.forEach((p, r) => {
    if (!p.length) throw new RangeError(`generate: prompt ${r} is empty`);
    p.forEach((t, i) => {
      if (!(Number.isInteger(t) && t >= 0 && t < c.vocabSize))
        throw new RangeError(`generate: prompt ${r} token ${i} = ${t} is outside the vocabulary [0, ${c.vocabSize})`);
    });
    if (p.length + opts.maxNewTokens > c.maxPositionEmbeddings) {
      throw new RangeError(
        `generate: prompt ${r} (${p.length} tokens) + ${opts.maxNewTokens} new tokens exceeds max_position_embeddings ${c.maxPositionEmbeddings}`,
      );
    }
  });
  if (opts.mtpDraftTokens && opts.mtpDraftTokens > model.mtp.length) {
    throw new RangeError(
      `generate: ${opts.mtpDraftTokens} MTP draft tokens asked, the model has ${model.mtp.length} MTP module(s)`,
    );
  }
}

/** Generates continuations of `prompts` (token ids); every backend, no autograd recording. */
export async function generate(
  model: DeepseekV3ForCausalLM,
  prompts: readonly (readonly number[])[],
  opts: GenerateOptions,
): Promise<GenerateOutput> {
  checkPrompts(model, prompts, opts);
  return noGradAsync(() =>
    opts.mtpDraftTokens ? generateSpeculative(model, prompts, opts) : generateBatched(model, prompts, opts),
  );
}

function newCache(
  model: DeepseekV3ForCausalLM,
  prompts: readonly (readonly number[])[],
  opts: GenerateOptions,
): PagedLatentCache {
  const bs = opts.blockSize ?? 16;
  // Speculative steps may run a few positions past the limit before they are cut.
  const slack = (opts.mtpDraftTokens ?? 0) + 2;
  const blocks = prompts.reduce((s, p) => s + Math.ceil((p.length + opts.maxNewTokens + slack) / bs), 0);
  return model.newCache(blocks * bs, { blockSize: bs });
}

/**
 * Token ids [rows.length] for the last logits of each row, sampled on the model's backend: row r draws
 * with seed (seed + r) and counter = the tokens it generated so far, so a row's draws do not depend on
 * the batch it ran in. Reads back only the ids, then disposes `logits` (a step's, read only here).
 */
async function sampleRows(
  model: DeepseekV3ForCausalLM,
  logits: Tensor,
  rows: readonly number[],
  generated: readonly number[][],
  opts: GenerateOptions,
): Promise<number[]> {
  const params = samplingTensors(
    rows.map((r) => ({
      temperature: opts.temperature,
      topK: opts.topK,
      topP: opts.topP,
      seed: ((opts.seed ?? 0) + r) >>> 0,
      counter: generated[r]!.length,
    })),
    model.backend,
  );
  try {
    return await readTokens(sampleTokens(logits, params)); // [rows, 1, V]: sampleTokens views it [rows, V]
  } finally {
    logits.dispose(); // read: the next step's host copy reuses its array (core's keptOnHost)
  }
}

async function generateBatched(
  model: DeepseekV3ForCausalLM,
  prompts: readonly (readonly number[])[],
  opts: GenerateOptions,
): Promise<GenerateOutput> {
  checkSampling(opts);
  const cache = newCache(model, prompts, opts);
  const seqs = prompts.map(() => cache.allocateSequence());
  const stop = new Set(opts.stopTokens ?? model.config.eosTokenIds);
  const out = prompts.map(() => [] as number[]);
  const done = prompts.map(() => opts.maxNewTokens === 0);
  const emit = (rows: readonly number[], ids: readonly number[]): void =>
    rows.forEach((r, i) => {
      if (done[r]) return;
      const t = ids[i]!;
      out[r]!.push(t);
      if (stop.has(t) || out[r]!.length >= opts.maxNewTokens) done[r] = true;
    });
  // Prefill: one batched pass when the prompts have equal length, else one pass per prompt.
  const sameLength = prompts.every((p) => p.length === prompts[0]!.length);
  const groups = sameLength ? [prompts.map((_, r) => r)] : prompts.map((_, r) => [r]);
  // Greedy rows take their tokens straight from the head (model.greedyStep: on the CPU a bf16 head is
  // screened, its logits never made); sampled ones draw from the step's last logits.
  const greedy = isGreedy(opts);
  const next = async (rows: readonly number[], rowSeqs: number[], tokens: Tensor): Promise<number[]> => {
    if (greedy) return model.greedyStep(cache, rowSeqs, tokens);
    const { logits } = model.step(cache, rowSeqs, tokens, { logits: 'last', hidden: false });
    return sampleRows(model, logits, rows, out, opts);
  };
  for (const rows of groups) {
    const tokens = ids(
      model,
      rows.map((r) => prompts[r]!),
    );
    emit(
      rows,
      await next(
        rows,
        rows.map((r) => seqs[r]!),
        tokens,
      ),
    );
  }
  // Decode: all unfinished rows step together, one token each. Each step's lists by loops, not map(): an
  // array map() makes has another map once this loop is optimized, which deoptimized the cache and MLA
  // code reading the sequence ids (docs/benchmarks.md, issue 13, eighteenth session).
  for (;;) {
    const active: number[] = [];
    const activeSeqs: number[] = [];
    const lastIds: number[][] = [];
    for (let r = 0; r < prompts.length; r++) {
      if (done[r]) continue;
      active.push(r);
      activeSeqs.push(seqs[r]!);
      lastIds.push([out[r]!.at(-1)!]);
    }
    if (!active.length) break;
    emit(active, await next(active, activeSeqs, ids(model, lastIds)));
  }
  cache.dispose();
  return { ids: prompts.map((p, r) => [...p, ...out[r]!]), newTokens: out };
}

async function generateSpeculative(
  model: DeepseekV3ForCausalLM,
  prompts: readonly (readonly number[])[],
  opts: GenerateOptions,
): Promise<GenerateOutput> {
  const cache = newCache(model, prompts, opts);
  const cached = new CachedModel(model, cache);
  const stats = new AcceptanceStats();
  const newTokens: number[][] = [];
  for (const [r, p] of prompts.entries()) {
    const res = await speculativeGenerate(cached, cache.allocateSequence(), p, {
      maxNewTokens: opts.maxNewTokens,
      draftTokens: opts.mtpDraftTokens!,
      sampling: { temperature: opts.temperature, topK: opts.topK, topP: opts.topP },
      seed: (opts.seed ?? 0) + r,
      stats,
      stopTokens: opts.stopTokens ?? model.config.eosTokenIds,
    });
    newTokens.push(res.tokens);
  }
  cache.dispose();
  return { ids: prompts.map((p, r) => [...p, ...newTokens[r]!]), newTokens, stats };
}
