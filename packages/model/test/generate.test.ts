// Greedy generation through the absorbed latent cache against HF generate (24 new tokens per row).
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { readSafetensors } from '@dsv3/core';
import { MLA, mhaPrefillConfig } from '@dsv3/mla';
import { generate, loadModel } from '../src/index.js';

const coreFixtures = join(import.meta.dirname, '../../core/test/fixtures');
const goldens = readSafetensors(join(import.meta.dirname, 'fixtures/tiny-v3-goldens.safetensors'));
const rows = (name: string, width: number): number[][] => {
  const d = Array.from(goldens.get(name).data as Int32Array);
  return Array.from({ length: d.length / width }, (_, r) => d.slice(r * width, (r + 1) * width));
};

describe('greedy generation vs HF generate', () => {
  const model = loadModel(join(coreFixtures, 'tiny-v3'));
  const prompts = rows('prompt_ids', 8);
  const want = rows('hf.generate', 32);

  it('batched prefill + decode through the paged latent cache', async () => {
    const out = await generate(model, prompts, { maxNewTokens: 24, temperature: 0, stopTokens: [] });
    expect(out.ids).toEqual(want);
  });

  it("a fresh prompt's attention in the MHA form (mhaPrefillConfig.minTokens 1) still generates HF's tokens", async () => {
    const mha = vi.spyOn(MLA.prototype as unknown as { freshPromptMha: () => unknown }, 'freshPromptMha');
    const saved = mhaPrefillConfig.minTokens;
    mhaPrefillConfig.minTokens = 1;
    try {
      const out = await generate(model, prompts, { maxNewTokens: 24, temperature: 0, stopTokens: [] });
      expect(out.ids).toEqual(want);
      expect(mha).toHaveBeenCalledTimes(model.config.numHiddenLayers); // every layer's prefill took it
    } finally {
      mhaPrefillConfig.minTokens = saved;
      mha.mockRestore();
    }
  });

  it('MTP speculative decoding emits exactly the greedy tokens', async () => {
    const out = await generate(model, prompts, { maxNewTokens: 24, temperature: 0, stopTokens: [], mtpDraftTokens: 1 });
    expect(out.ids).toEqual(want);
    expect(out.stats!.steps).toBeGreaterThan(0);
    console.log(`MTP acceptance on random tiny-v3 weights: ${(out.stats!.conditionalRate(0) * 100).toFixed(1)}%`);
  });

  it('ragged prompts decode independently (each row equals its own single-row run)', async () => {
    const ragged = [prompts[0]!.slice(0, 5), prompts[1]!];
    const both = await generate(model, ragged, { maxNewTokens: 6, temperature: 0, stopTokens: [] });
    const first = await generate(model, [ragged[0]!], { maxNewTokens: 6, temperature: 0, stopTokens: [] });
    expect(both.newTokens[0]).toEqual(first.newTokens[0]);
    expect(both.newTokens[1]).toEqual(want[1]!.slice(8, 14));
  });

  it('seeded sampling is reproducible and rejects bad input', async () => {
    const a = await generate(model, prompts, {
      maxNewTokens: 5,
      temperature: 0.8,
      topK: 50,
      topP: 0.9,
      seed: 3,
      stopTokens: [],
    });
    const b = await generate(model, prompts, {
      maxNewTokens: 5,
      temperature: 0.8,
      topK: 50,
      topP: 0.9,
      seed: 3,
      stopTokens: [],
    });
    expect(a.ids).toEqual(b.ids);
    await expect(generate(model, [[5000]], { maxNewTokens: 1 })).rejects.toThrow(/outside the vocabulary/);
    await expect(generate(model, [[1, 2]], { maxNewTokens: 500 })).rejects.toThrow(/max_position_embeddings 128/);
  });
});
