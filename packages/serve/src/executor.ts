// The executor runs the model on what the scheduler chose: one ragged forward over the paged latent
// cache per step, plus (with MTP speculative decoding) one batched forward of the MTP module that drafts
// the next tokens. Behind this interface a multi-process engine (tensor or expert parallel workers, a
// disaggregated prefill) can take over the model while the scheduler stays as it is.
import { concat, narrow, noGradAsync, type Tensor } from '@dsv3/core';
import type { PagedLatentCache } from '@dsv3/mla';
import { raggedMtpStep, raggedStep, type DeepseekV3ForCausalLM, type RaggedSegment } from '@dsv3/model';

/** MTP drafting over positions the last run() computed. */
export interface DraftInput {
  seq: number;
  /** first row of those positions among the last run's tokens (flat, in segment order) */
  row: number;
  count: number;
  /** for each position i, the token that follows it (t_{i+1}); omitted when draft() is given them on the device */
  tokens?: readonly number[];
  /** trailing positions whose logits to return (default 1) */
  logitRows?: number;
}

export interface Executor {
  readonly vocabSize: number;
  /** MTP modules available for drafting (0: none) */
  readonly numMtpModules: number;
  readonly cache: PagedLatentCache;
  /**
   * One forward over `segments`: logits [Σ logitRows, V] of each segment's last logitRows tokens, left
   * where the model runs (the engine samples there and reads back only token ids).
   */
  run(segments: readonly RaggedSegment[]): Promise<Tensor>;
  /**
   * MTP module 0 over positions of the last run (its cache layer grows by them): logits [Σ logitRows,
   * V] of each input's last rows. `ids` (i32 [Σ count], on the model's backend) gives the following
   * tokens when they are still on the device (just sampled), in place of the inputs' tokens.
   */
  draft(inputs: readonly DraftInput[], ids?: Tensor): Promise<Tensor>;
  /** Rolls every layer (the MTP module's too) of a sequence holding more than `length` tokens back to it. */
  truncate(seq: number, length: number): void;
}

export class ModelExecutor implements Executor {
  private lastHidden: Tensor | null = null;

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

  async run(segments: readonly RaggedSegment[]): Promise<Tensor> {
    return noGradAsync(async () => {
      const out = await raggedStep(this.model, this.cache, segments);
      this.lastHidden = this.numMtpModules > 0 ? out.hidden : null;
      return out.logits;
    });
  }

  async draft(inputs: readonly DraftInput[], ids?: Tensor): Promise<Tensor> {
    const h = this.lastHidden;
    if (!h)
      throw new Error(
        'ModelExecutor.draft: no hidden states (the model has no MTP module, or run() has not been called)',
      );
    return noGradAsync(async () => {
      const parts = inputs.map((d) => narrow(h, 0, d.row, d.count));
      const hidden = parts.length === 1 ? parts[0]! : concat(parts, 0);
      const out = await raggedMtpStep(
        this.model,
        this.cache,
        0,
        hidden,
        inputs.map((d) => {
          if (!ids && d.tokens?.length !== d.count)
            throw new RangeError(`ModelExecutor.draft: sequence ${d.seq} needs ${d.count} following tokens`);
          return { seq: d.seq, tokens: d.tokens ?? new Array<number>(d.count).fill(0), logitRows: d.logitRows };
        }),
        { logits: 'last', ids },
      );
      return out.logits;
    });
  }

  truncate(seq: number, length: number): void {
    for (let l = 0; l < this.cache.numLayers; l++)
      if (this.cache.length(seq, l) > length) this.cache.truncateLayer(seq, l, length);
  }
}
