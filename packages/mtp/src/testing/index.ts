// Test and benchmark helpers of @dsv3/mtp (subpath export `@dsv3/mtp/testing`): a reference decoder
// block with a simple KV cache, and a tiny causal LM that implements SpeculativeModel.
export {
  KVCache,
  PointwiseBlock,
  ReferenceAttention,
  ReferenceBlock,
  type ReferenceBlockOptions,
} from './reference-block.js';
export { TinyCausalLM, type TinyLMConfig, type TinySequence } from './tiny-lm.js';
