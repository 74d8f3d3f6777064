// DeepSeek-V3 for causal LM: embedding → N decoder layers → RMSNorm → head, plus the MTP modules
// (layer num_hidden_layers + k in checkpoints) sharing the embedding and head. Module and parameter
// names are Hugging Face's, so published checkpoints load by name.
import {
  crossEntropy,
  Embedding,
  Linear,
  Module,
  ModuleList,
  keptOnHost,
  narrow,
  releasingStepOutputs,
  Rng,
  RMSNorm,
  type Backend,
  type DType,
  type Tensor,
} from '@dsv3/core';
import { PagedLatentCache } from '@dsv3/mla';
import { MoE } from '@dsv3/moe';
import { MTPModule, mtpLoss, readTokens, sampleTokens, samplingTensors } from '@dsv3/mtp';
import type { ModelConfig } from './config.js';
import { DecoderLayer, runDecoderLayer, type LatentCacheRef, type LayerContext } from './decoder-layer.js';
import { runLayerScopes } from './layer-scopes.js';

export interface ModelOptions {
  backend?: Backend;
  /** Parameter dtype (default f32: checkpoints in bf16 are widened on load). */
  dtype?: DType;
  seed?: number;
  /** Init std of the projections (DeepSeek-V3: 0.006); default 1/sqrt(fan_in). */
  std?: number;
  /** 'none': parameters start at zero instead of random (a loader overwrites them all anyway). */
  init?: 'random' | 'none';
  /** The stream the random init draws from (default `new Rng(seed)`). */
  rng?: Rng;
}

/**
 * An Rng that draws nothing: weights a checkpoint will overwrite skip the random fill (nn's layers take
 * shared zeros; other fills get fresh f32 zeros, pages the OS maps lazily).
 */
class NoInitRng extends Rng {
  override get drawsNothing(): boolean {
    return true;
  }
  override fillNormal(out: Float32Array | Float64Array): typeof out {
    return new Float32Array(out.length);
  }
  override fillUniform(out: Float32Array | Float64Array): typeof out {
    return new Float32Array(out.length);
  }
  override fork(): Rng {
    return this;
  }
}

export interface ForwardOptions {
  /** Absolute position of the first token (default 0). */
  startPos?: number;
  /** Keep the hidden state after every layer (HF's output_hidden_states). */
  outputHiddenStates?: boolean;
  /** Also run the MTP modules (training), returning their logits. */
  mtp?: boolean;
}

/** Options of DeepseekV3ForCausalLM.step: what it returns besides appending the latents to the cache. */
export interface StepOptions {
  /** every position's logits (default) or only the last one's */
  logits?: 'all' | 'last';
  /** the pre-norm hidden states too (default true; MTP drafting reads them) */
  hidden?: boolean;
}

export interface CausalLMOutput {
  /** [B, S, V] */
  logits: Tensor;
  /** Last layer's output before the final norm [B, S, D] (what MTP consumes). */
  hidden: Tensor;
  /** Embeddings, then each layer's output, the last one after the final norm (as HF returns them). */
  hiddenStates?: Tensor[];
  /** Per MTP depth k (0-based): logits [B, S-k-1, V]; row i predicts token i+k+2. */
  mtpLogits?: Tensor[];
}

/**
 * MTP depth k (0-based) at position i sees h^{k-1}_i and token t_{i+k+1}: positions 0 .. S-k-2.
 * Null when the sequence is too short for this depth.
 */
function mtpInputs(k: number, hPrev: Tensor, ids: Tensor): { hidden: Tensor; tokens: Tensor } | null {
  const n = ids.shape[1]! - k - 1;
  return n > 0 ? { hidden: narrow(hPrev, 1, 0, n), tokens: narrow(ids, 1, k + 1, n) } : null;
}

/** The HF "model." part: embed_tokens, layers, norm. */
export class DeepseekV3Model extends Module {
  readonly embedTokens: Embedding;
  readonly layers: ModuleList<DecoderLayer>;
  readonly norm: RMSNorm;

  constructor(config: ModelConfig, opts: ModelOptions & { rng: Rng }) {
    super();
    const init = {
      dtype: opts.dtype,
      backend: opts.backend,
      rng: opts.rng,
      ...(opts.std !== undefined && { std: opts.std }),
    };
    this.embedTokens = this.child(
      'embed_tokens',
      // rows in the activations' dtype also from a table the loader keeps narrower (bf16)
      new Embedding(config.vocabSize, config.hiddenSize, {
        ...init,
        std: opts.std ?? 1,
        outDtype: opts.dtype ?? 'f32',
      }),
    );
    this.layers = this.child(
      'layers',
      new ModuleList(
        Array.from(
          { length: config.numHiddenLayers },
          (_, i) => new DecoderLayer(config, i, { ...init, rng: opts.rng.fork() }),
        ),
      ),
    );
    this.norm = this.child(
      'norm',
      new RMSNorm(config.hiddenSize, config.rmsNormEps, { dtype: opts.dtype, backend: opts.backend }),
    );
  }
}

export class DeepseekV3ForCausalLM extends Module {
  readonly config: ModelConfig;
  readonly backend: Backend | undefined;
  readonly model: DeepseekV3Model;
  readonly lmHead: Linear;
  /** MTP modules (checkpoint layers num_hidden_layers + k); they share embed_tokens and lm_head. */
  readonly mtp: ModuleList<MTPModule<LatentCacheRef>>;

  constructor(config: ModelConfig, opts: ModelOptions = {}) {
    super();
    this.config = config;
    this.backend = opts.backend;
    const rng = opts.init === 'none' ? new NoInitRng() : (opts.rng ?? new Rng(opts.seed ?? 0));
    this.model = this.child('model', new DeepseekV3Model(config, { ...opts, rng }));
    const init = {
      dtype: opts.dtype,
      backend: opts.backend,
      rng: rng.fork(),
      ...(opts.std !== undefined && { std: opts.std }),
    };
    this.lmHead = this.child('lm_head', new Linear(config.hiddenSize, config.vocabSize, init));
    if (config.tieWordEmbeddings) throw new Error('tie_word_embeddings is not supported by DeepSeek-V3 checkpoints');
    const shared = { embedding: this.model.embedTokens, head: this.lmHead };
    this.mtp = this.child(
      'mtp',
      new ModuleList(
        Array.from({ length: config.numNextnPredictLayers }, (_, k) => {
          const block = new DecoderLayer(config, config.numHiddenLayers + k, { ...init, rng: rng.fork() });
          return new MTPModule(block, {
            dim: config.hiddenSize,
            vocabSize: config.vocabSize,
            eps: config.rmsNormEps,
            shared,
            dtype: opts.dtype,
            backend: opts.backend,
            rng: rng.fork(),
          });
        }),
      ),
    );
  }

  get numLayers(): number {
    return this.config.numHiddenLayers;
  }

  private checkIds(ids: Tensor): [number, number] {
    if (ids.dtype !== 'i32' || ids.ndim !== 2)
      throw new Error(`input ids must be i32 [batch, seq], got ${ids.dtype} [${ids.shape.join(', ')}]`);
    const [B, S] = ids.shape as [number, number];
    return [B, S];
  }

  /**
   * Full-sequence forward (training form, differentiable; every backend: it enqueues, reading a result
   * is the only wait): logits for every position, the pre-norm hidden state, optionally every layer's
   * output and MTP logits.
   */
  forward(ids: Tensor, opts: ForwardOptions = {}): CausalLMOutput {
    this.checkIds(ids);
    const ctx: LayerContext = { startPos: opts.startPos ?? 0 };
    let h = this.model.embedTokens.forward(ids);
    const states = opts.outputHiddenStates ? [h] : undefined;
    for (const layer of this.model.layers) {
      h = layer.forward(h, ctx);
      states?.push(h);
    }
    const out = this.head(h, states);
    if (!opts.mtp) return out;
    const mtpLogits: Tensor[] = [];
    let hp = h;
    for (const [k, m] of this.mtp.items.entries()) {
      const inp = mtpInputs(k, hp, ids);
      if (!inp) break;
      const r = m.forward(inp.hidden, inp.tokens, ctx);
      hp = r.hidden;
      mtpLogits.push(r.logits);
    }
    return { ...out, mtpLogits };
  }

  /** Final norm and output head; the last recorded hidden state becomes the normed one (as in HF). */
  head(h: Tensor, states: Tensor[] | undefined): CausalLMOutput {
    const normed = this.model.norm.forward(h);
    if (states) states[states.length - 1] = normed;
    return { logits: this.lmHead.forward(normed), hidden: h, ...(states && { hiddenStates: states }) };
  }

  /**
   * Next-token cross-entropy plus the MTP loss (λ/D)·Σ_k CE(depth k, t_{i+k+1}): the training objective.
   */
  loss(ids: Tensor, opts: { mtpLambda?: number } = {}): { loss: Tensor; main: Tensor; mtp: Tensor | null } {
    const [, S] = this.checkIds(ids);
    const useMtp = (opts.mtpLambda ?? 0) > 0 && this.mtp.length > 0;
    const out = this.forward(ids, { mtp: useMtp });
    const main = crossEntropy(narrow(out.logits, 1, 0, S - 1), narrow(ids, 1, 1, S - 1));
    if (!useMtp) return { loss: main, main, mtp: null };
    const m = mtpLoss(out.mtpLogits!, ids, { lambda: opts.mtpLambda! });
    return { loss: main.add(m.loss), main, mtp: m.loss };
  }

  /** A paged latent cache on the model's backend sized for `tokens` tokens in all, with pages for the MTP modules too. */
  newCache(tokens: number, opts: { blockSize?: number } = {}): PagedLatentCache {
    const blockSize = opts.blockSize ?? 16;
    return new PagedLatentCache({
      numLayers: this.config.numHiddenLayers + this.mtp.length,
      kvLoraRank: this.config.kvLoraRank,
      ropeDim: this.config.qkRopeHeadDim,
      numBlocks: Math.max(1, Math.ceil(tokens / blockSize)),
      blockSize,
      ...(this.backend && { backend: this.backend }),
    });
  }

  /**
   * Cached inference step: appends `tokens` [B, n] (i32) to sequences `seqIds` of `cache` through the
   * absorbed MLA and returns their logits [B, n, V] and pre-norm hidden states [B, n, D]. Enqueues only
   * (every backend); the caller reads what it needs (e.g. sampled ids). With
   * `logits: 'last'` only the last position's logits are computed ([B, 1, V]): all a prefill needs to
   * generate, and the head is the largest product of a step. With `hidden: false` the hidden states are
   * not returned: a caller that reads only the logits (greedy generation, the bench) skips their host
   * copy (a prefill's every row, 2 MB at 512 tokens on V3-mini).
   */
  step(
    cache: PagedLatentCache,
    seqIds: readonly number[],
    tokens: Tensor,
    opts: StepOptions & { hidden: false },
  ): { logits: Tensor };
  step(
    cache: PagedLatentCache,
    seqIds: readonly number[],
    tokens: Tensor,
    opts?: StepOptions,
  ): { logits: Tensor; hidden: Tensor };
  step(
    cache: PagedLatentCache,
    seqIds: readonly number[],
    tokens: Tensor,
    opts: StepOptions = {},
  ): { logits: Tensor; hidden?: Tensor } {
    const [, n] = this.checkIds(tokens);
    // Dead kernel outputs go back to the CPU engine's memory as each layer (and a prefill's attention
    // half) ends and at the end of the step (layer-scopes.ts, core's step-outputs.ts), so a prefill holds
    // one layer's working set instead of all the step made.
    return releasingStepOutputs(
      () => {
        const h = this.runLayers(cache, seqIds, tokens, n);
        const used = opts.logits === 'last' && n > 1 ? narrow(h, 1, n - 1, 1) : h;
        // the caller keeps these (a decode step's logits are 0.5 MB on V3-mini): host copies, the blocks released
        const logits = keptOnHost(this.lmHead.forward(this.model.norm.forward(used)));
        return opts.hidden === false ? { logits } : { logits, hidden: keptOnHost(h) };
      },
      // the modules this scope runs itself (each layer keeps its own): a walk of the whole model costs ~4 ms
      { keep: [this.model.embedTokens, this.model.norm, this.lmHead, cache] },
    );
  }

  /**
   * step() for greedy decoding: each sequence's next token, the argmax of its last position's logits (the
   * first of equals; 0 when none is finite, as greedy sampling picks). Where the head allows (core's
   * Linear.argmaxRows: on the CPU, one sequence against a bf16 head is screened by its 8-bit copy) the
   * logits are never made; elsewhere the step's last logits are sampled greedily on the model's backend.
   */
  async greedyStep(cache: PagedLatentCache, seqIds: readonly number[], tokens: Tensor): Promise<number[]> {
    const out = this.greedyHead(cache, seqIds, tokens);
    if ('ids' in out) return out.ids;
    try {
      return await readTokens(sampleTokens(out.logits, this.greedySampling(seqIds.length)));
    } finally {
      out.logits.dispose(); // read: the next step's host copy reuses its array (core's keptOnHost)
    }
  }

  /** greedyStep on the CPU backend, synchronously (the load's warm-up). */
  greedyStepSync(cache: PagedLatentCache, seqIds: readonly number[], tokens: Tensor): number[] {
    if (this.backend && this.backend.name !== 'cpu')
      throw new Error(`greedyStepSync: runs on the CPU backend, got ${this.backend.name} (use greedyStep)`);
    const out = this.greedyHead(cache, seqIds, tokens);
    if ('ids' in out) return out.ids;
    try {
      return Array.from(sampleTokens(out.logits, this.greedySampling(seqIds.length)).dataSync() as Int32Array);
    } finally {
      out.logits.dispose();
    }
  }

  /** A greedy step's tokens where the head gives them (Linear.argmaxRows), else its last logits (host copies). */
  private greedyHead(
    cache: PagedLatentCache,
    seqIds: readonly number[],
    tokens: Tensor,
  ): { ids: number[] } | { logits: Tensor } {
    const [, n] = this.checkIds(tokens);
    return releasingStepOutputs(
      () => {
        const h = this.runLayers(cache, seqIds, tokens, n);
        const normed = this.model.norm.forward(n > 1 ? narrow(h, 1, n - 1, 1) : h);
        const ids = this.lmHead.argmaxRows(normed);
        return ids
          ? { ids: Array.from(ids, (id) => Math.max(id, 0)) }
          : { logits: keptOnHost(this.lmHead.forward(normed)) };
      },
      { keep: [this.model.embedTokens, this.model.norm, this.lmHead, cache] },
    );
  }

  /** Greedy sampling parameters for `rows` rows on the model's backend. */
  private greedySampling(rows: number) {
    return samplingTensors(
      Array.from({ length: rows }, () => ({ temperature: 0 })),
      this.backend,
    );
  }

  /** The decoder layers over `tokens` [B, n] appended to `seqIds` of `cache`: the last layer's output [B, n, D]. */
  private runLayers(cache: PagedLatentCache, seqIds: readonly number[], tokens: Tensor, n: number): Tensor {
    return runLayerScopes({
      layers: this.model.layers.items,
      cache,
      input: () => this.model.embedTokens.forward(tokens),
      attentionResidual: (layer, i, x) =>
        layer.attentionResidual(x, { startPos: 0, cache: { cache, layer: i, seqIds } }),
      tokens: n * tokens.shape[0]!,
    });
  }

  /** MTP depth k as a cached inference step over its own cache layer (drafting). */
  mtpStep(
    cache: PagedLatentCache,
    seqIds: readonly number[],
    k: number,
    hPrev: Tensor,
    tokens: Tensor,
  ): { logits: Tensor; hidden: Tensor } {
    const m = this.mtp.at(k);
    return releasingStepOutputs(
      () => {
        const h = (m.block as DecoderLayer).forward(m.combine(hPrev, tokens), {
          startPos: 0,
          cache: { cache, layer: this.config.numHiddenLayers + k, seqIds },
        });
        return { logits: keptOnHost(m.logits(h)), hidden: keptOnHost(h) };
      },
      { keep: [m, cache] },
    );
  }
}

/**
 * model.forward() through the distributed forward of expert-parallel MoE layers (their all-to-alls are
 * awaited, as @dsv3/moe's runMoE does); exactly model.forward() when no layer is expert-parallel.
 */
export async function runCausalLM(
  model: DeepseekV3ForCausalLM,
  ids: Tensor,
  opts: ForwardOptions = {},
): Promise<CausalLMOutput> {
  const blocks = [...model.model.layers, ...model.mtp.items.map((m) => m.block as DecoderLayer)];
  if (!blocks.some((l) => l.mlp instanceof MoE && l.mlp.distributed)) return model.forward(ids, opts);
  const ctx: LayerContext = { startPos: opts.startPos ?? 0 };
  let h = model.model.embedTokens.forward(ids);
  const states = opts.outputHiddenStates ? [h] : undefined;
  for (const layer of model.model.layers) {
    h = await runDecoderLayer(layer, h, ctx);
    states?.push(h);
  }
  const out = model.head(h, states);
  if (!opts.mtp) return out;
  const mtpLogits: Tensor[] = [];
  let hp = h;
  for (const [k, m] of model.mtp.items.entries()) {
    const inp = mtpInputs(k, hp, ids);
    if (!inp) break;
    hp = await runDecoderLayer(m.block as DecoderLayer, m.combine(inp.hidden, inp.tokens), ctx);
    mtpLogits.push(m.logits(hp));
  }
  return { ...out, mtpLogits };
}
