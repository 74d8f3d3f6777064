// MTP state-dict names ↔ the published checkpoint layout (layer num_hidden_layers + d).
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Embedding, Linear, tensor, type Tensor } from '@dsv3/core';
import {
  mtpFromCheckpointName,
  mtpStateDictFromCheckpoint,
  mtpStateDictToCheckpoint,
  mtpToCheckpointName,
  MultiTokenPredictor,
} from '../src/index.js';
import { ReferenceBlock } from '../src/testing/index.js';
import { randomize } from './helpers.js';

const fixture = JSON.parse(readFileSync(new URL('./fixtures/tiny-v3-names.json', import.meta.url), 'utf8')) as {
  num_hidden_layers: number;
  tensors: Record<string, number[]>;
};
const L = fixture.num_hidden_layers;

describe('checkpoint names', () => {
  it('maps every tensor of the tiny-v3 MTP layer (model.layers.4.*) and back', () => {
    const names = Object.keys(fixture.tensors);
    const mtpNames = names.filter((n) => n.startsWith(`model.layers.${L}.`));
    expect(mtpNames.length).toBeGreaterThan(60);
    for (const n of names) {
      const r = mtpFromCheckpointName(n, { numHiddenLayers: L });
      if (!n.startsWith(`model.layers.${L}.`)) {
        expect(r, n).toBeNull();
        continue;
      }
      expect(r!.depth).toBe(0);
      expect(mtpToCheckpointName(r!.local, { numHiddenLayers: L })).toBe(n);
      expect(mtpToCheckpointName(r!.moduleName, { numHiddenLayers: L, depth: 0, localPrefix: '' })).toBe(n);
    }
    const local = (n: string): string => mtpFromCheckpointName(`model.layers.${L}.${n}`, { numHiddenLayers: L })!.local;
    expect(local('enorm.weight')).toBe('layers.0.enorm.weight');
    expect(local('hnorm.weight')).toBe('layers.0.hnorm.weight');
    expect(local('eh_proj.weight')).toBe('layers.0.eh_proj.weight');
    expect(local('shared_head.norm.weight')).toBe('layers.0.shared_head.norm.weight');
    expect(local('shared_head.head.weight')).toBe('layers.0.shared_head.head.weight');
    expect(local('embed_tokens.weight')).toBe('layers.0.embed_tokens.weight');
    expect(local('self_attn.kv_a_proj_with_mqa.weight')).toBe('layers.0.block.self_attn.kv_a_proj_with_mqa.weight');
    expect(local('mlp.experts.15.down_proj.weight')).toBe('layers.0.block.mlp.experts.15.down_proj.weight');
    expect(local('mlp.gate.e_score_correction_bias')).toBe('layers.0.block.mlp.gate.e_score_correction_bias');
    // eh_proj is [d, 2d] as the checkpoint stores it: [out = hidden, in = (embedding; hidden)]
    expect(fixture.tensors[`model.layers.${L}.eh_proj.weight`]).toEqual([128, 256]);
    expect(mtpToCheckpointName('layers.1.block.input_layernorm.weight', { numHiddenLayers: 61 })).toBe(
      'model.layers.62.input_layernorm.weight',
    );
  });

  it("'share' skips the embedding/head copies; 'load' takes them", () => {
    const ckpt: Record<string, Tensor> = {};
    for (const [n, shape] of Object.entries(fixture.tensors)) ckpt[n] = { shape } as unknown as Tensor; // names and shapes only
    const shared = mtpStateDictFromCheckpoint(ckpt, { numHiddenLayers: L });
    expect(shared.skipped.sort()).toEqual([
      `model.layers.${L}.embed_tokens.weight`,
      `model.layers.${L}.shared_head.head.weight`,
    ]);
    expect(Object.keys(shared.state)).toContain('layers.0.block.self_attn.q_a_proj.weight');
    expect(
      Object.keys(shared.state)
        .filter((n) => !n.startsWith('layers.0.block.'))
        .sort(),
    ).toEqual([
      'layers.0.eh_proj.weight',
      'layers.0.enorm.weight',
      'layers.0.hnorm.weight',
      'layers.0.shared_head.norm.weight',
    ]);
    const loaded = mtpStateDictFromCheckpoint(ckpt, { numHiddenLayers: L, headAndEmbedding: 'load' });
    expect(loaded.skipped).toEqual([]);
    expect(Object.keys(loaded.state)).toEqual(
      expect.arrayContaining(['layers.0.embed_tokens.weight', 'layers.0.shared_head.head.weight']),
    );
    const one = mtpStateDictFromCheckpoint(ckpt, { numHiddenLayers: L, only: 0 });
    expect(Object.keys(one.state)).toEqual(expect.arrayContaining(['enorm.weight', 'block.mlp.gate.weight']));
  });

  for (const mode of ['share', 'load'] as const) {
    it(`round-trips a MultiTokenPredictor through checkpoint names (${mode})`, async () => {
      const dim = 8;
      const vocab = 11;
      const embedding = new Embedding(vocab, dim, { seed: 1 });
      const head = new Linear(dim, vocab, { seed: 2 });
      const make = (seed: number): MultiTokenPredictor =>
        new MultiTokenPredictor({
          depth: 2,
          dim,
          vocabSize: vocab,
          seed,
          shared: { embedding, head },
          ownEmbedding: mode === 'load',
          ownHead: mode === 'load',
          makeBlock: (d) => new ReferenceBlock({ dim, heads: 2, seed: seed + d }),
        });
      const a = make(3);
      randomize(a, 4);
      const ckpt = mtpStateDictToCheckpoint(a.stateDict(), {
        numHiddenLayers: 61,
        headAndEmbedding: mode,
        shared: { embedding: embedding.weight.value, head: head.weight.value },
      });
      expect(Object.keys(ckpt)).toEqual(
        expect.arrayContaining([
          'model.layers.61.enorm.weight',
          'model.layers.62.self_attn.q_proj.weight',
          'model.layers.62.shared_head.head.weight',
          'model.layers.61.embed_tokens.weight',
        ]),
      );
      const b = make(5);
      const { state, skipped } = mtpStateDictFromCheckpoint(ckpt, { numHiddenLayers: 61, headAndEmbedding: mode });
      expect(skipped.length).toBe(mode === 'share' ? 4 : 0);
      b.loadStateDict(state); // strict: every name present, nothing unexpected
      const h = tensor(
        Float32Array.from({ length: 2 * 5 * dim }, (_, i) => Math.sin(i)),
        { shape: [2, 5, dim] },
      );
      const ids = tensor(
        Int32Array.from({ length: 10 }, (_, i) => (i * 7) % vocab),
        { shape: [2, 5], dtype: 'i32' },
      );
      const la = await a.forward(h, ids).logits[1]!.data();
      const lb = await b.forward(h, ids).logits[1]!.data();
      expect(Array.from(lb)).toEqual(Array.from(la));
    });
  }
});
