// loadModel's prefillActivations 'i16' on tiny-v3 (core's integer weight GEMM for the bf16 / FP8 products
// of >= i16MinRows rows): the logits of HF's 2 x 40 golden input within 5e-3 (relative) of HF float32 —
// measured 1.64e-3 for bf16 and 1.66e-3 for FP8 bytes against HF's dequantized run, where f32 activations
// give ~9.4e-7 — and differ from the f32-activation logits (the route ran); greedy generation still equals
// HF's; the mode is process-wide and switched back to 'f32' after each test.
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { noGrad, readSafetensors, setPrefillActivations, tensor } from '@dsv3/core';
import { generate, loadModel } from '../src/index.js';
import { compare } from './helpers.js';

const coreFixtures = join(import.meta.dirname, '../../core/test/fixtures');
const goldens = readSafetensors(join(import.meta.dirname, 'fixtures/tiny-v3-goldens.safetensors'));
const g = (name: string): Float32Array => goldens.get(name).data as Float32Array;
const rows = (name: string, width: number): number[][] => {
  const d = Array.from(goldens.get(name).data as Int32Array);
  return Array.from({ length: d.length / width }, (_, r) => d.slice(r * width, (r + 1) * width));
};
const ids = tensor(goldens.get('input_ids').data, { shape: [2, 40], dtype: 'i32' });

afterEach(() => setPrefillActivations('f32'));

describe.each([
  ['bf16', 'tiny-v3', 'hf.logits'],
  ['fp8', 'tiny-v3-fp8', 'hf.fp8_dequant.logits'],
] as const)('prefillActivations i16, %s weights', (weights, fixture, golden) => {
  it('logits within 5e-3 of HF float32 and not the f32-activation ones; greedy generation equals HF', async () => {
    const f32 = noGrad(() => loadModel(join(coreFixtures, fixture), { weights }).forward(ids)).logits.dataSync();
    const model = loadModel(join(coreFixtures, fixture), { weights, prefillActivations: 'i16' });
    const i16 = noGrad(() => model.forward(ids)).logits.dataSync();
    const c = compare(i16, g(golden));
    console.log(`${weights} weights, i16 prefill activations vs ${golden}: rel ${c.rel.toExponential(2)}`);
    expect(c.rel).toBeLessThanOrEqual(5e-3);
    expect(compare(i16, f32).rel).toBeGreaterThan(1e-5);
    if (weights === 'bf16') {
      const out = await generate(model, rows('prompt_ids', 8), { maxNewTokens: 24, temperature: 0, stopTokens: [] });
      expect(out.ids).toEqual(rows('hf.generate', 32));
    }
  });
});

it("prefillActivations 'i16' is refused on another backend", () => {
  expect(() =>
    loadModel(join(coreFixtures, 'tiny-v3'), {
      backend: { name: 'webgpu' } as never,
      prefillActivations: 'i16',
    }),
  ).toThrow(/CPU mode/);
});
