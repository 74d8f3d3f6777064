// A tiny causal LM implementing SpeculativeModel, for tests and benchmarks: embedding → L reference
// blocks → RMSNorm → head, plus D MTP modules sharing its embedding and head. Each sequence owns one
// KVCache per main layer and one per MTP module.
import { Embedding, Linear, Module, ModuleList, noGrad, reshape, RMSNorm, Rng, tensor, type Tensor } from '@dsv3/core';
import { MultiTokenPredictor } from '../mtp-module.js';
import type { SpeculativeModel, StepOutput } from '../speculative.js';
import { KVCache, ReferenceBlock } from './reference-block.js';

export interface TinyLMConfig {
  vocabSize: number;
  dim: number;
  layers: number;
  heads?: number;
  ffnDim?: number;
  /** Number of MTP modules (0: none). */
  mtpDepth?: number;
  dtype?: 'f32' | 'f64';
  seed?: number;
  /** Embedding init std (default 1). */
  embedStd?: number;
}

export interface TinySequence {
  main: KVCache[];
  mtp: KVCache[];
}

export class TinyCausalLM extends Module implements SpeculativeModel<TinySequence> {
  readonly config: Required<TinyLMConfig>;
  readonly embedTokens: Embedding;
  readonly layers: ModuleList<ReferenceBlock>;
  readonly norm: RMSNorm;
  readonly lmHead: Linear;
  readonly mtp: MultiTokenPredictor<KVCache> | null;

  constructor(cfg: TinyLMConfig) {
    super();
    const c: Required<TinyLMConfig> = {
      heads: 1,
      ffnDim: 2 * cfg.dim,
      mtpDepth: 0,
      dtype: 'f32',
      seed: 0,
      embedStd: 1,
      ...cfg,
    };
    this.config = c;
    const rng = new Rng(c.seed);
    const o = { dtype: c.dtype, rng };
    this.embedTokens = this.child('embed_tokens', new Embedding(c.vocabSize, c.dim, { ...o, std: c.embedStd }));
    this.layers = this.child('layers', new ModuleList<ReferenceBlock>());
    for (let l = 0; l < c.layers; l++)
      this.layers.push(new ReferenceBlock({ dim: c.dim, heads: c.heads, ffnDim: c.ffnDim, ...o, rng: rng.fork() }));
    this.norm = this.child('norm', new RMSNorm(c.dim, 1e-6, { dtype: c.dtype }));
    this.lmHead = this.child('lm_head', new Linear(c.dim, c.vocabSize, o));
    this.mtp =
      c.mtpDepth > 0
        ? this.child(
            'mtp',
            new MultiTokenPredictor<KVCache>({
              depth: c.mtpDepth,
              dim: c.dim,
              vocabSize: c.vocabSize,
              dtype: c.dtype,
              rng: rng.fork(),
              shared: { embedding: this.embedTokens, head: this.lmHead },
              makeBlock: () =>
                new ReferenceBlock({ dim: c.dim, heads: c.heads, ffnDim: c.ffnDim, ...o, rng: rng.fork() }),
            }),
          )
        : null;
  }

  get vocabSize(): number {
    return this.config.vocabSize;
  }
  get numMtpModules(): number {
    return this.mtp?.depth ?? 0;
  }

  /** Main-model parameters (everything but the MTP modules' own). */
  trunkParameters(): ReturnType<Module['parameters']> {
    const mtp = new Set(this.mtp?.parameters() ?? []);
    return this.parameters().filter((p) => !mtp.has(p));
  }

  /**
   * The main model over tokens i32 [B, S]: hidden [B, S, D] before the final norm, and logits. With
   * caches (one per layer), the S tokens are appended after what they hold.
   */
  trunk(tokens: Tensor, caches?: readonly KVCache[]): { hidden: Tensor; logits: Tensor } {
    const startPos = caches?.[0]?.length ?? 0;
    let h = this.embedTokens.forward(tokens);
    this.layers.items.forEach((blk, l) => {
      h = blk.forward(h, { startPos, cache: caches?.[l] });
    });
    return { hidden: h, logits: this.lmHead.forward(this.norm.forward(h)) };
  }

  newSequence(): TinySequence {
    return {
      main: this.layers.items.map(() => new KVCache()),
      mtp: Array.from({ length: this.numMtpModules }, () => new KVCache()),
    };
  }

  private ids(tokens: readonly number[]): Tensor {
    for (const t of tokens)
      if (!(Number.isInteger(t) && t >= 0 && t < this.vocabSize))
        throw new RangeError(`token ${t} is outside [0, ${this.vocabSize})`);
    return tensor(Int32Array.from(tokens), { shape: [1, tokens.length], dtype: 'i32' });
  }

  async forward(seq: TinySequence, tokens: readonly number[]): Promise<StepOutput> {
    return noGrad(() => {
      const { hidden, logits } = this.trunk(this.ids(tokens), seq.main);
      return {
        hidden: reshape(hidden, [tokens.length, this.config.dim]),
        logits: reshape(logits, [tokens.length, this.vocabSize]),
      };
    });
  }

  truncate(seq: TinySequence, length: number): void {
    for (const c of seq.main) c.truncate(length);
  }

  async draft(seq: TinySequence, depth: number, hidden: Tensor, tokens: readonly number[]): Promise<StepOutput> {
    if (!this.mtp) throw new Error('this TinyCausalLM has no MTP modules');
    const cache = seq.mtp[depth];
    if (!cache) throw new RangeError(`no MTP module ${depth}`);
    return noGrad(() => {
      const n = tokens.length;
      const out = this.mtp!.module(depth).forward(reshape(hidden, [1, n, this.config.dim]), this.ids(tokens), {
        startPos: cache.length,
        cache,
      });
      return { hidden: reshape(out.hidden, [n, this.config.dim]), logits: reshape(out.logits, [n, this.vocabSize]) };
    });
  }

  truncateDraft(seq: TinySequence, depth: number, length: number): void {
    const c = seq.mtp[depth];
    if (!c) throw new RangeError(`no MTP module ${depth}`);
    c.truncate(length);
  }
}
