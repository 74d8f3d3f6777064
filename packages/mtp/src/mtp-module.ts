// Multi-token prediction modules (DeepSeek-V3 §2.2). Depth k (1-based) combines the previous depth's
// hidden state at position i with the embedding of token t_{i+k}:
//   h'_i = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)])      (embedding first, as the weights were trained)
//   h^k  = Block_k(h')
//   P^k  = Head(shared_head.norm(h^k))                             (predicts t_{i+k+1})
// h^0 is the main model's last hidden state *before* its final norm (as in vLLM / DeepSeek's code).
// The embedding and output head are the main model's (passed in, not owned) unless the module is built
// with its own copies, which the published checkpoints store as `embed_tokens` and `shared_head.head`.
import {
  concat,
  Embedding,
  Linear,
  Module,
  ModuleList,
  narrow,
  RMSNorm,
  Rng,
  type InitOptions,
  type Tensor,
} from '@dsv3/core';
import type { BlockContext, DecoderBlock } from './block.js';
import { mtpLoss, type MTPLossOptions, type MTPLossResult } from './loss.js';

/** Token ids (any shape, i32) → embeddings [..., D]. `Embedding` from @dsv3/core satisfies it. */
export interface TokenEmbedding {
  forward(ids: Tensor): Tensor;
}
/** Hidden states [..., D] → logits [..., V]. `Linear` from @dsv3/core satisfies it. */
export interface OutputHead {
  forward(h: Tensor): Tensor;
}
/** The main model's embedding and output head, which MTP modules share. */
export interface SharedWeights {
  embedding: TokenEmbedding;
  head: OutputHead;
}

export interface MTPModuleOptions extends InitOptions {
  dim: number;
  vocabSize: number;
  /** RMSNorm epsilon of enorm, hnorm and shared_head.norm (V3: 1e-6). */
  eps?: number;
  /** The main model's embedding and head; may also be given per call. */
  shared?: Partial<SharedWeights>;
  /** Own an `embed_tokens` copy (loaded from a checkpoint) instead of using the shared embedding. */
  ownEmbedding?: boolean;
  /** Own a `shared_head.head` copy instead of using the shared head. */
  ownHead?: boolean;
}

/** `shared_head`: the final norm of an MTP module, plus the head when the module owns a copy. */
export class MTPSharedHead extends Module {
  readonly norm: RMSNorm;
  readonly head: Linear | null;
  constructor(dim: number, vocabSize: number, eps: number, ownHead: boolean, opts: InitOptions) {
    super();
    this.norm = this.child('norm', new RMSNorm(dim, eps, { dtype: opts.dtype, backend: opts.backend }));
    this.head = ownHead ? this.child('head', new Linear(dim, vocabSize, opts)) : null;
  }
}

export interface MTPOutput {
  /** h^k [B, S, D]: the block's output (before shared_head.norm), what depth k + 1 consumes. */
  hidden: Tensor;
  /** Logits [B, S, V]; row i predicts token t_{i+k+1}. */
  logits: Tensor;
}

/** One MTP depth. State dict names: enorm, hnorm, eh_proj, block.*, shared_head.norm (+ shared_head.head, embed_tokens when owned). */
export class MTPModule<C = unknown> extends Module {
  readonly dim: number;
  readonly vocabSize: number;
  readonly enorm: RMSNorm;
  readonly hnorm: RMSNorm;
  readonly ehProj: Linear;
  readonly block: DecoderBlock<C>;
  readonly sharedHead: MTPSharedHead;
  readonly embedTokens: Embedding | null;
  private shared: Partial<SharedWeights>;

  constructor(block: DecoderBlock<C>, opts: MTPModuleOptions) {
    super();
    const { dim, vocabSize } = opts;
    if (!(Number.isInteger(dim) && dim > 0 && Number.isInteger(vocabSize) && vocabSize > 0))
      throw new RangeError(`MTPModule: dim and vocabSize must be positive integers, got ${dim} and ${vocabSize}`);
    const eps = opts.eps ?? 1e-6;
    const rng = opts.rng ?? new Rng(opts.seed ?? 0);
    const init: InitOptions = {
      dtype: opts.dtype,
      backend: opts.backend,
      rng,
      ...(opts.std !== undefined ? { std: opts.std } : {}),
    };
    this.dim = dim;
    this.vocabSize = vocabSize;
    this.enorm = this.child('enorm', new RMSNorm(dim, eps, { dtype: opts.dtype, backend: opts.backend }));
    this.hnorm = this.child('hnorm', new RMSNorm(dim, eps, { dtype: opts.dtype, backend: opts.backend }));
    this.ehProj = this.child('eh_proj', new Linear(2 * dim, dim, init));
    this.block = this.child('block', block);
    this.sharedHead = this.child('shared_head', new MTPSharedHead(dim, vocabSize, eps, opts.ownHead ?? false, init));
    this.embedTokens = opts.ownEmbedding ? this.child('embed_tokens', new Embedding(vocabSize, dim, init)) : null;
    this.shared = { ...opts.shared };
  }

  /** Sets (or replaces) the main model's embedding / head used when the module owns no copy. */
  share(shared: Partial<SharedWeights>): this {
    this.shared = { ...this.shared, ...shared };
    return this;
  }

  private embedding(shared?: Partial<SharedWeights>): TokenEmbedding {
    const e = this.embedTokens ?? shared?.embedding ?? this.shared.embedding;
    if (!e) throw new Error("MTPModule: no embedding (pass the main model's as `shared`, or build with ownEmbedding)");
    return e;
  }
  private head(shared?: Partial<SharedWeights>): OutputHead {
    const h = this.sharedHead.head ?? shared?.head ?? this.shared.head;
    if (!h) throw new Error("MTPModule: no output head (pass the main model's as `shared`, or build with ownHead)");
    return h;
  }

  /** h' = eh_proj([enorm(Emb(tokens)); hnorm(hPrev)]): hPrev [B, S, D], tokens i32 [B, S] (t_{i+k}). */
  combine(hPrev: Tensor, tokens: Tensor, shared?: Partial<SharedWeights>): Tensor {
    const d = hPrev.shape[hPrev.ndim - 1];
    if (d !== this.dim) throw new Error(`MTPModule: hidden states have width ${d}, expected ${this.dim}`);
    if (tokens.ndim !== hPrev.ndim - 1 || tokens.shape.some((n, i) => n !== hPrev.shape[i])) {
      throw new Error(
        `MTPModule: tokens [${tokens.shape.join(', ')}] must match hidden states [${hPrev.shape.join(', ')}] without the last axis`,
      );
    }
    const e = this.enorm.forward(this.embedding(shared).forward(tokens));
    return this.ehProj.forward(concat([e, this.hnorm.forward(hPrev)], -1));
  }

  /** Logits of hidden states h^k: Head(shared_head.norm(h^k)). */
  logits(hidden: Tensor, shared?: Partial<SharedWeights>): Tensor {
    return this.head(shared).forward(this.sharedHead.norm.forward(hidden));
  }

  /**
   * One depth over S positions: hPrev [B, S, D] (h^{k-1}_i), tokens i32 [B, S] (t_{i+k}) → h^k and logits.
   * `ctx` is handed to the block unchanged (positions, cache); it defaults to a fresh causal pass.
   */
  forward(
    hPrev: Tensor,
    tokens: Tensor,
    ctx: BlockContext<C> = { startPos: 0 },
    shared?: Partial<SharedWeights>,
  ): MTPOutput {
    const hidden = this.block.forward(this.combine(hPrev, tokens, shared), ctx);
    return { hidden, logits: this.logits(hidden, shared) };
  }
}

export interface MultiTokenPredictorOptions<C = unknown> extends MTPModuleOptions {
  /** Number of sequential MTP modules D (V3: 1). */
  depth: number;
  /** Builds the decoder block of depth index d (0-based). */
  makeBlock: (d: number) => DecoderBlock<C>;
}

export interface MTPForwardOptions<C = unknown> {
  shared?: Partial<SharedWeights>;
  /** Block context per depth index d (0-based); default { startPos: 0 } (whole sequences, causal). */
  context?: (d: number) => BlockContext<C>;
  /** Run only the first `maxDepth` modules. */
  maxDepth?: number;
}

export interface MTPForward {
  /** Per depth k = 1..D: h^k [B, S - k, D] at positions i = 0..S-k-1. */
  hidden: Tensor[];
  /** Per depth k = 1..D: logits [B, S - k, V]; row i predicts t_{i+k+1} (the last row's target lies beyond the sequence). */
  logits: Tensor[];
}

/** D MTP modules applied sequentially. State dict names: layers.{d}.{module names}. */
export class MultiTokenPredictor<C = unknown> extends Module {
  readonly layers: ModuleList<MTPModule<C>>;

  constructor(opts: MultiTokenPredictorOptions<C>) {
    super();
    if (!(Number.isInteger(opts.depth) && opts.depth >= 1))
      throw new RangeError(`MultiTokenPredictor: depth must be a positive integer, got ${opts.depth}`);
    const rng = opts.rng ?? new Rng(opts.seed ?? 0);
    const { depth: _depth, makeBlock, ...moduleOpts } = opts;
    this.layers = this.child('layers', new ModuleList<MTPModule<C>>());
    for (let d = 0; d < opts.depth; d++)
      this.layers.push(new MTPModule<C>(makeBlock(d), { ...moduleOpts, rng: rng.fork() }));
  }

  get depth(): number {
    return this.layers.length;
  }

  module(d: number): MTPModule<C> {
    return this.layers.at(d);
  }

  share(shared: Partial<SharedWeights>): this {
    for (const m of this.layers) m.share(shared);
    return this;
  }

  /**
   * Training forward over whole sequences: hMain [B, S, D] is the main model's last hidden state before
   * its final norm, tokens i32 [B, S]. Depth k runs on the S - k positions whose input token t_{i+k}
   * exists; depths with no positions left are omitted. Gradients flow into hMain and the shared weights.
   */
  forward(hMain: Tensor, tokens: Tensor, opts: MTPForwardOptions<C> = {}): MTPForward {
    if (
      hMain.ndim !== 3 ||
      tokens.ndim !== 2 ||
      hMain.shape[0] !== tokens.shape[0] ||
      hMain.shape[1] !== tokens.shape[1]
    ) {
      throw new Error(
        `MultiTokenPredictor: expected hidden [B, S, D] and tokens [B, S], got [${hMain.shape.join(', ')}] and [${tokens.shape.join(', ')}]`,
      );
    }
    const s = hMain.shape[1]!;
    const maxDepth = Math.min(opts.maxDepth ?? this.depth, this.depth);
    const hidden: Tensor[] = [];
    const logits: Tensor[] = [];
    let prev = hMain;
    for (let d = 0; d < maxDepth; d++) {
      const k = d + 1;
      const len = s - k;
      if (len <= 0) break;
      const h = narrow(prev, 1, 0, len);
      const t = narrow(tokens, 1, k, len);
      const out = this.module(d).forward(h, t, opts.context?.(d) ?? { startPos: 0 }, opts.shared);
      hidden.push(out.hidden);
      logits.push(out.logits);
      prev = out.hidden;
    }
    return { hidden, logits };
  }

  /** forward() then mtpLoss() with D = this.depth: the training objective in one call. */
  loss(
    hMain: Tensor,
    tokens: Tensor,
    opts: MTPLossOptions & MTPForwardOptions<C>,
  ): MTPLossResult & { forward: MTPForward } {
    const fwd = this.forward(hMain, tokens, opts);
    return {
      ...mtpLoss(fwd.logits, tokens, { depth: Math.min(opts.maxDepth ?? this.depth, this.depth), ...opts }),
      forward: fwd,
    };
  }
}
