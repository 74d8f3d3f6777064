// A cached inference step's layers, each in a scope of core's releasingStepOutputs, nested so that the
// step holds one layer's input at a time: layer i's scope encloses layers 0..i-1, whose scopes pass each
// output up, and releases that output once layer i has read it. (Scopes one after another would pass
// every layer's output up to the step's, which held them all until it ended: 8 x 2 MiB on a 512-token
// V3-mini prefill, 61 x 14 MiB at V3's size.) From SPLIT_LAYER_TOKENS tokens a layer's attention half
// runs in a scope of its own too, so its outputs go back before the MLP takes its work arrays (the
// MoE's: a prefill's peak memory). model.step and raggedStep run their layers through it.
import { releasingStepOutputs, type Tensor } from '@dsv3/core';
import type { PagedLatentCache } from '@dsv3/mla';
import type { DecoderLayer } from './decoder-layer.js';

/**
 * Tokens in a step from which each layer's attention half runs in a scope of its own: a prefill's; a
 * decode step's outputs are small, and a scope's walk of the modules it keeps costs time.
 */
export const SPLIT_LAYER_TOKENS = 64;

export interface LayerScopes {
  layers: readonly DecoderLayer[];
  cache: PagedLatentCache;
  /** the first layer's input (the embedded tokens), made inside the first layer's scope */
  input: () => Tensor;
  /** layer i's first half, h + attention(h), over the cache (model.step's or a ragged batch's attention) */
  attentionResidual: (layer: DecoderLayer, i: number, h: Tensor) => Tensor;
  /** tokens in the step (batch x new tokens) */
  tokens: number;
}

/** The hidden states after every layer (the last layer's output: its scope is the outermost). */
export function runLayerScopes(s: LayerScopes): Tensor {
  const split = s.tokens >= SPLIT_LAYER_TOKENS;
  const through = (i: number): Tensor => {
    if (i < 0) return s.input();
    const layer = s.layers[i]!;
    return releasingStepOutputs(
      () => {
        const x = through(i - 1);
        const h1 = split
          ? releasingStepOutputs(() => s.attentionResidual(layer, i, x), {
              keep: [layer.inputLayernorm, layer.selfAttn, s.cache],
            })
          : s.attentionResidual(layer, i, x);
        return layer.mlpResidual(h1);
      },
      { keep: [layer, s.cache] },
    );
  };
  return through(s.layers.length - 1);
}
