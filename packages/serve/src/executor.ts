// The executor runs the model on what the scheduler chose: one ragged forward over the paged latent
// cache per step. Behind this interface a multi-process engine (tensor or expert parallel workers,
// a disaggregated prefill) can take over the model while the scheduler stays as it is.
import { noGradAsync } from '@dsv3/core';
import type { PagedLatentCache } from '@dsv3/mla';
import { raggedStep, type DeepseekV3ForCausalLM, type RaggedSegment } from '@dsv3/model';

export interface Executor {
  readonly vocabSize: number;
  /** MTP modules available for drafting (0: none) */
  readonly numMtpModules: number;
  readonly cache: PagedLatentCache;
  /** One forward over `segments`; host logits of each segment's last token, [segments, V] row-major. */
  run(segments: readonly RaggedSegment[]): Promise<Float32Array>;
}

export class ModelExecutor implements Executor {
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

  async run(segments: readonly RaggedSegment[]): Promise<Float32Array> {
    return noGradAsync(async () => {
      const { logits } = await raggedStep(this.model, this.cache, segments);
      const host = await logits.data();
      return host instanceof Float32Array ? host : Float32Array.from(host as ArrayLike<number>);
    });
  }
}
