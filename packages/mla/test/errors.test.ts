// Bad input gets clear errors.
import { describe, expect, it } from 'vitest';
import { noGrad, tensor } from '@dsv3/core';
import {
  CacheError,
  kvElementsPerToken,
  latentAttention,
  MLA,
  MLAConfigError,
  mlaConfigFromHf,
  PagedLatentCache,
  type MLAConfig,
} from '../src/index.js';
import { randArray, randT } from './helpers.js';

const cfg: MLAConfig = {
  hiddenSize: 16,
  numHeads: 2,
  qLoraRank: 8,
  kvLoraRank: 8,
  qkNopeHeadDim: 4,
  qkRopeHeadDim: 4,
  vHeadDim: 4,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  maxPositionEmbeddings: 10,
};

const hf = {
  hidden_size: 16,
  num_attention_heads: 2,
  q_lora_rank: 8,
  kv_lora_rank: 8,
  qk_nope_head_dim: 4,
  qk_rope_head_dim: 4,
  v_head_dim: 4,
  max_position_embeddings: 10,
  rope_theta: 10000,
};

describe('config errors', () => {
  it('odd rope dim, non-positive or fractional sizes, bad yarn fields', () => {
    expect(() => new MLA({ ...cfg, qkRopeHeadDim: 5 })).toThrow(MLAConfigError);
    expect(() => new MLA({ ...cfg, qkRopeHeadDim: 5 })).toThrow(/qkRopeHeadDim must be even/);
    expect(() => new MLA({ ...cfg, numHeads: 0 })).toThrow(/numHeads must be a positive integer/);
    expect(() => new MLA({ ...cfg, vHeadDim: 2.5 })).toThrow(/vHeadDim/);
    expect(() => new MLA({ ...cfg, qLoraRank: 0 })).toThrow(/qLoraRank \(or null\)/);
    expect(
      () => new MLA({ ...cfg, ropeScaling: { type: 'yarn', factor: -1, originalMaxPositionEmbeddings: 4 } }),
    ).toThrow(/ropeScaling.factor/);
    expect(
      () => new MLA({ ...cfg, ropeScaling: { type: 'linear' as 'yarn', factor: 2, originalMaxPositionEmbeddings: 4 } }),
    ).toThrow(/must be 'yarn'/);
  });

  it('HF configs: head sizes that do not add up, kv heads, biases, rope types, missing fields', () => {
    expect(mlaConfigFromHf(hf).qkRopeHeadDim).toBe(4);
    expect(mlaConfigFromHf({ ...hf, q_lora_rank: 0 }).qLoraRank).toBeNull();
    expect(() => mlaConfigFromHf({ ...hf, qk_head_dim: 9 })).toThrow(
      /qk_head_dim 9 != qk_nope_head_dim \+ qk_rope_head_dim/,
    );
    expect(() => mlaConfigFromHf({ ...hf, num_key_value_heads: 1 })).toThrow(/num_key_value_heads/);
    expect(() => mlaConfigFromHf({ ...hf, attention_bias: true })).toThrow(/attention_bias/);
    expect(() => mlaConfigFromHf({ ...hf, rope_scaling: { type: 'dynamic', factor: 2 } })).toThrow(
      /rope type 'dynamic' is not supported/,
    );
    expect(() => mlaConfigFromHf({ ...hf, rope_scaling: { type: 'yarn', factor: 2 } })).toThrow(
      /original_max_position_embeddings/,
    );
    expect(() => mlaConfigFromHf({ ...hf, qk_rope_head_dim: 3 })).toThrow(/even/);
    const { kv_lora_rank: _drop, ...missing } = hf;
    expect(() => mlaConfigFromHf(missing)).toThrow(/missing field 'kv_lora_rank'/);
  });
});

describe('input errors', () => {
  const m = new MLA(cfg);
  it('wrong input shapes and dtypes', () => {
    expect(() => m.forward(randT([2, 3, 15], 1))).toThrow(/input must be \[batch, seq, 16\], got \[2, 3, 15\]/);
    expect(() => m.forward(randT([3, 16], 1))).toThrow(/input must be \[batch, seq, 16\]/);
    expect(() => m.forward(randT([1, 3, 16], 1, 'f64'))).toThrow(/input is f64 but the weights are f32/);
    expect(() => m.forward(randT([2, 3, 16], 1), { positions: [0, 1] })).toThrow(/positions must hold 3/);
    expect(() => m.forward(randT([2, 3, 16], 1), { positions: [[0, 1, 2]] })).toThrow(
      /positions must be 2 arrays of 3/,
    );
  });

  it('sequences beyond maxPositionEmbeddings', () => {
    expect(() => m.forward(randT([1, 11, 16], 1))).toThrow(/beyond maxPositionEmbeddings \(10\)/);
    expect(() => m.forward(randT([1, 3, 16], 1), { startPos: 8 })).toThrow(
      /positions 8..10 go beyond maxPositionEmbeddings/,
    );
    expect(() => m.forwardAbsorbed(randT([1, 2, 16], 1), { positions: [9, 10] })).toThrow(/position 10 is beyond/);
    expect(() => m.forward(randT([1, 2, 16], 1), { positions: [-1, 0] })).toThrow(/non-negative integer/);
    const cache = new PagedLatentCache({ numLayers: 1, kvLoraRank: 8, ropeDim: 4, numBlocks: 4, blockSize: 4 });
    const s = cache.allocate();
    noGrad(() => m.forwardAbsorbed(randT([1, 8, 16], 1), { cache, seqIds: [s] }));
    expect(() => m.forwardAbsorbed(randT([1, 3, 16], 1), { cache, seqIds: [s] })).toThrow(
      /position 10 is beyond maxPositionEmbeddings/,
    );
    expect(cache.length(s)).toBe(8);
  });

  it('cache / config mismatch and cache misuse', () => {
    const wrong = new PagedLatentCache({ numLayers: 1, kvLoraRank: 6, ropeDim: 4, numBlocks: 4 });
    const s = wrong.allocate();
    expect(() => m.forwardAbsorbed(randT([1, 2, 16], 1), { cache: wrong, seqIds: [s] })).toThrow(
      /cache\/config mismatch: the cache holds kvLoraRank 6 \+ ropeDim 4, this layer needs 8 \+ 4/,
    );
    const cache = new PagedLatentCache({ numLayers: 2, kvLoraRank: 8, ropeDim: 4, numBlocks: 4 });
    const t = cache.allocate();
    expect(() => m.forwardAbsorbed(randT([1, 2, 16], 1), { cache, layer: 2, seqIds: [t] })).toThrow(
      /layer 2 is out of range for a cache of 2 layers/,
    );
    expect(() => m.forwardAbsorbed(randT([2, 2, 16], 1), { cache, seqIds: [t] })).toThrow(
      /seqIds, one per batch row \(2\), got 1/,
    );
    expect(() => m.forwardAbsorbed(randT([1, 2, 16], 1), { cache, seqIds: [42] })).toThrow(
      /unknown sequence 42 \(live sequences: 0\)/,
    );
    expect(() => m.forwardAbsorbed(randT([1, 2, 16], 1), { cache, seqIds: [t], startPos: 3 })).toThrow(
      /positions continue from the cached lengths/,
    );
    expect(() => m.forwardAbsorbed(randT([1, 2, 16], 1), { seqIds: [t] })).toThrow(/need a cache/);
  });
});

describe('cache errors', () => {
  const cache = new PagedLatentCache({ numLayers: 2, kvLoraRank: 8, ropeDim: 4, numBlocks: 2, blockSize: 2 });
  it('construction', () => {
    expect(() => new PagedLatentCache({ numLayers: 0, kvLoraRank: 8, ropeDim: 4, numBlocks: 2 })).toThrow(
      /numLayers must be an integer >= 1/,
    );
    expect(() => new PagedLatentCache({ numLayers: 1, kvLoraRank: 8, ropeDim: 4, numBlocks: 2, blockSize: 0 })).toThrow(
      /blockSize/,
    );
    expect(
      () => new PagedLatentCache({ numLayers: 1, kvLoraRank: 8, ropeDim: 4, numBlocks: 2, dtype: 'bf16' as 'f32' }),
    ).toThrow(/dtype must be 'f32' or 'f64'/);
  });
  it('unknown sequences, mismatched dims, bad layers and ranges, out of blocks', () => {
    expect(() => cache.append(0, 7, new Float32Array(8), new Float32Array(4))).toThrow(CacheError);
    expect(() => cache.fork(7)).toThrow(/unknown sequence 7 \(live sequences: none\)/);
    const s = cache.allocate();
    expect(() => cache.append(0, s, new Float32Array(12), new Float32Array(4))).toThrow(
      /not a whole number of 8-wide rows/,
    );
    expect(() => cache.append(0, s, new Float32Array(16), new Float32Array(4))).toThrow(/ckv has 2 rows but kr has 1/);
    expect(() =>
      cache.append(0, s, tensor(randArray(12, 1), { shape: [2, 6] }), tensor(randArray(8, 1), { shape: [2, 4] })),
    ).toThrow(/8 wide \(kvLoraRank\)/);
    expect(() => cache.append(2, s, new Float32Array(8), new Float32Array(4))).toThrow(/layer 2 is out of range/);
    cache.append(0, s, new Float32Array(8 * 3), new Float32Array(4 * 3));
    expect(() => cache.read(0, s, 0, 4)).toThrow(/outside sequence 0's 3 tokens/);
    expect(() => cache.append(1, s, new Float32Array(8 * 5), new Float32Array(4 * 5))).toThrow(/out of blocks/);
    expect(() => cache.truncate(s, 4)).toThrow(/cannot truncate sequence 0 to 4 tokens \(it holds 3\)/);
    cache.free(s);
    expect(() => cache.length(s)).toThrow(/unknown sequence/);
  });
  it('kvElementsPerToken', () => {
    expect(() => kvElementsPerToken({ kind: 'gqa', numLayers: 2, numHeads: 6, numGroups: 4, headDim: 8 })).toThrow(
      /6 heads do not divide into 4 groups/,
    );
    expect(() => kvElementsPerToken({ kind: 'mha', numLayers: 2, headDim: 8 })).toThrow(
      /numHeads must be a positive integer/,
    );
    expect(() => kvElementsPerToken({ kind: 'xyz' as 'mha', numLayers: 1 })).toThrow(/unknown kind/);
  });
  it('latentAttention shape checks', () => {
    const q = tensor(randArray(8, 1), { shape: [1, 1, 1, 8] });
    const r = tensor(randArray(4, 1), { shape: [1, 1, 1, 4] });
    const kv = tensor(randArray(16, 1), { shape: [1, 2, 8] });
    const kr = tensor(randArray(8, 1), { shape: [1, 2, 4] });
    expect(() => latentAttention(q, r, tensor(randArray(12, 1), { shape: [1, 2, 6] }), kr, { scale: 1 })).toThrow(
      /ckv must be \[1, T, 8\]/,
    );
    expect(() => latentAttention(q, r, kv, tensor(randArray(6, 1), { shape: [1, 2, 3] }), { scale: 1 })).toThrow(
      /kr must be \[1, 2, 4\]/,
    );
    expect(() => latentAttention(q, tensor(randArray(4, 1), { shape: [1, 1, 4] }), kv, kr, { scale: 1 })).toThrow(
      /qRope must be/,
    );
    expect(() => latentAttention(q, r, kv, kr, { scale: 1, causalOffset: -1 })).toThrow(
      /causalOffset must be a non-negative integer/,
    );
  });
});
