// One DeepSeek-V3 decoder layer: RMSNorm → MLA → residual → RMSNorm → dense SwiGLU or MoE → residual,
// under the Hugging Face child names. It is also the block an MTP module runs (DecoderBlock). The
// model's camelCase config is an MLAConfig as it is, and gives the MoE config through moeConfigFromModel.
import { add, Module, Rng, RMSNorm, SwiGLU, type InitOptions, type Tensor } from '@dsv3/core';
import { MLA, type PagedLatentCache } from '@dsv3/mla';
import { MoE, moeConfigFromModel, runMoE } from '@dsv3/moe';
import type { BlockContext, DecoderBlock } from '@dsv3/mtp';
import { isMoeLayer, type ModelConfig } from './config.js';

/** Where a layer reads and appends its latents during cached inference. */
export interface LatentCacheRef {
  cache: PagedLatentCache;
  /** the cache layer (main layers 0..L-1, MTP modules after them) */
  layer: number;
  /** one cache sequence per batch row */
  seqIds: readonly number[];
}

export type LayerContext = BlockContext<LatentCacheRef>;

export class DecoderLayer extends Module implements DecoderBlock<LatentCacheRef> {
  readonly inputLayernorm: RMSNorm;
  readonly selfAttn: MLA;
  readonly postAttentionLayernorm: RMSNorm;
  readonly mlp: SwiGLU | MoE;

  constructor(config: ModelConfig, index: number, opts: InitOptions = {}) {
    super();
    const rng = opts.rng ?? new Rng(opts.seed ?? index);
    const init = { ...opts, rng };
    const norm = { dtype: opts.dtype, backend: opts.backend };
    this.inputLayernorm = this.child('input_layernorm', new RMSNorm(config.hiddenSize, config.rmsNormEps, norm));
    this.selfAttn = this.child('self_attn', new MLA(config, init));
    this.postAttentionLayernorm = this.child(
      'post_attention_layernorm',
      new RMSNorm(config.hiddenSize, config.rmsNormEps, norm),
    );
    this.mlp = this.child(
      'mlp',
      isMoeLayer(config, index)
        ? new MoE(moeConfigFromModel(config), init)
        : new SwiGLU(config.hiddenSize, config.intermediateSize, init),
    );
  }

  /** Training form without a cache, absorbed MLA over the cache's pages with one; every backend. */
  forward(h: Tensor, ctx: LayerContext): Tensor {
    return this.mlpResidual(this.attentionResidual(h, ctx));
  }

  /** The layer's first half: h + attention(h). */
  attentionResidual(h: Tensor, ctx: LayerContext): Tensor {
    return add(h, this.attention(h, ctx));
  }

  /** The layer's second half: h1 + mlp(norm(h1)) (dense SwiGLU or MoE). */
  mlpResidual(h1: Tensor): Tensor {
    return add(h1, this.mlp.forward(this.postAttentionLayernorm.forward(h1)));
  }

  /** The attention branch: norm, then MLA (positions stay on the device when given as a tensor). */
  attention(h: Tensor, ctx: LayerContext): Tensor {
    const x = this.inputLayernorm.forward(h);
    if (ctx.cache) return this.selfAttn.forwardAbsorbed(x, ctx.cache);
    return this.selfAttn.forward(x, ctx.positions ? { positions: ctx.positions } : { startPos: ctx.startPos });
  }
}

/**
 * A layer's forward through its MoE's distributed forward when expert parallelism installed one (the
 * all-to-alls are awaited), else layer.forward: for callers that may meet either kind of layer, as
 * @dsv3/moe's runMoE.
 */
export async function runDecoderLayer(layer: DecoderLayer, h: Tensor, ctx: LayerContext): Promise<Tensor> {
  if (!(layer.mlp instanceof MoE && layer.mlp.distributed)) return layer.forward(h, ctx);
  const h1 = layer.attentionResidual(h, ctx);
  return add(h1, await runMoE(layer.mlp, layer.postAttentionLayernorm.forward(h1)));
}
