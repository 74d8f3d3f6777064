// The model against Hugging Face transformers and DeepSeek's own inference code on the tiny-v3 checkpoint.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors, tensor, noGrad, narrow, reshape } from '@dsv3/core';
import { loadModel } from '../src/index.js';
import { compare } from './helpers.js';

const coreFixtures = join(import.meta.dirname, '../../core/test/fixtures');
const goldens = readSafetensors(join(import.meta.dirname, 'fixtures/tiny-v3-goldens.safetensors'));
const g = (name: string): Float32Array => goldens.get(name).data as Float32Array;

describe('tiny-v3 vs Hugging Face (CPU, f32)', () => {
  const model = loadModel(join(coreFixtures, 'tiny-v3'));
  const ids = tensor(goldens.get('input_ids').data, { shape: [2, 40], dtype: 'i32' });

  it('full-sequence logits and every hidden state', () => {
    const out = noGrad(() => model.forward(ids, { outputHiddenStates: true }));
    const logits = compare(out.logits.dataSync(), g('hf.logits'));
    console.log(`hf.logits: rel ${logits.rel.toExponential(2)}, max abs ${logits.maxAbs.toExponential(2)}`);
    expect(logits.rel).toBeLessThanOrEqual(1e-5);
    expect(logits.maxAbs).toBeLessThanOrEqual(1e-3);
    out.hiddenStates!.forEach((h, i) => {
      const c = compare(h.dataSync(), g(`hf.hidden.${i}`));
      expect(c.rel, `hf.hidden.${i}`).toBeLessThanOrEqual(1e-5);
    });
  });

  it("DeepSeek's own absorb and naive last-position logits", () => {
    const out = noGrad(() => model.forward(ids));
    const last = reshape(narrow(out.logits, 1, 39, 1), [2, 1024]).dataSync();
    for (const impl of ['absorb', 'naive']) {
      const c = compare(last, g(`official.${impl}.last_logits`));
      expect(c.rel, impl).toBeLessThanOrEqual(1e-5);
    }
  });
});
