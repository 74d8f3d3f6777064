// The load-time warm-up (warm-up.ts) leaves the model as it was: a generation after a warmed load gives
// bit for bit the tokens and logits of one after a cold load; bad token counts are refused clearly.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectSameBits } from '@dsv3/core/testing';
import { noGrad, tensor } from '@dsv3/core';
import { loadModel, warmUp } from '../src/index.js';

const tinyV3 = join(import.meta.dirname, '../../core/test/fixtures/tiny-v3');

/** Logits of a 9-token prefill and two decode steps on a fresh cache. */
function logitsOf(model: ReturnType<typeof loadModel>): number[][] {
  return noGrad(() => {
    const cache = model.newCache(16);
    const seq = [cache.allocateSequence()];
    const out: number[][] = [];
    const ids = Int32Array.from({ length: 9 }, (_, i) => (i * 31 + 5) % model.config.vocabSize);
    out.push(Array.from(model.step(cache, seq, tensor(ids, { shape: [1, 9], dtype: 'i32' })).logits.dataSync()));
    for (const t of [3, 17]) {
      const step = model.step(cache, seq, tensor(Int32Array.of(t), { shape: [1, 1], dtype: 'i32' }));
      out.push(Array.from(step.logits.dataSync()));
    }
    cache.dispose();
    return out;
  });
}

describe('warm-up at load', () => {
  for (const weights of ['f32', 'bf16'] as const)
    it(`${weights} weights: logits after a warmed load equal a cold load's bit for bit`, () => {
      const cold = logitsOf(loadModel(tinyV3, { weights }));
      const warm = logitsOf(loadModel(tinyV3, { weights, warmupTokens: 100 }));
      expect(warm.length).toBe(cold.length);
      warm.forEach((row, i) => expectSameBits(row, cold[i]!, `position ${i}'s logits`));
    });

  it('decode steps stop at max_position_embeddings: a warm-up of 127 tokens (tiny-v3: 128 positions) runs', () => {
    const model = loadModel(tinyV3);
    const cold = logitsOf(model);
    warmUp(model, 127); // one decode step fits; more would pass the last position
    const again = logitsOf(model);
    expect(again.length).toBe(cold.length);
    again.forEach((row, i) => expectSameBits(row, cold[i]!, `position ${i}'s logits`));
  });

  it('refuses token counts outside [1, max_position_embeddings - 1] clearly', () => {
    const model = loadModel(tinyV3);
    expect(() => warmUp(model, 0)).toThrow(/tokens must be an integer in \[1, 127\].*got 0/);
    expect(() => warmUp(model, 128)).toThrow(/got 128/);
    expect(() => warmUp(model, 2.5)).toThrow(/got 2.5/);
  });
});
