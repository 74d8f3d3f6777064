// The decoder-block interface MTP modules run their transformer block through. @dsv3/model plugs in its
// V3 decoder layer (RMSNorm → MLA → residual → RMSNorm → MoE → residual); tests use the reference block
// in ./testing.
import type { Module, Tensor } from '@dsv3/core';

/**
 * What a block needs besides its input: where the S new positions sit in the sequence and, for
 * incremental decoding, the cache it attends over and appends to.
 */
export interface BlockContext<C = unknown> {
  /**
   * Absolute position of `h[:, 0]`: the number of positions already held in `cache` (0 when training on
   * whole sequences). Positions of the S inputs are startPos, startPos + 1, ..., unless `positions` says
   * otherwise.
   */
  readonly startPos: number;
  /** Explicit absolute positions, i32 [S] or [B, S] (ragged or packed batches); overrides startPos + s. */
  readonly positions?: Tensor;
  /**
   * The block's cache for this sequence (KV, or MLA's latent pages). When present, the block attends over
   * the cached positions plus the S new ones, and appends the new ones to the cache.
   */
  readonly cache?: C;
  /**
   * An additive attention mask broadcastable to [B, heads, S, startPos + S]; causal when absent.
   */
  readonly mask?: Tensor;
}

/**
 * One transformer decoder block: h [B, S, D] → [B, S, D] (the residual stream in, the residual stream
 * out). It is a Module, so its parameters join the MTP module's state dict under `block.`, which the
 * checkpoint mapping rewrites to `model.layers.{num_hidden_layers + k}.` (see checkpoint.ts). Blocks
 * should use the Hugging Face child names (input_layernorm, self_attn, post_attention_layernorm, mlp).
 */
export interface DecoderBlock<C = unknown> extends Module {
  forward(h: Tensor, ctx: BlockContext<C>): Tensor;
}
