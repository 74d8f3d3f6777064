// A cached step's kernel outputs go back to the CPU engine's memory when they are dead (core's
// releasingStepOutputs, per layer and per step): with every released block poisoned (NaN), a prefill's
// logits still match HF float32, repeated steps hold no more output blocks than the first, a step holds
// one layer's input at a time (not every layer's output until it ends), and the
// logits and hidden states the caller keeps are host copies (the logits alone with hidden: false). Imports are dynamic so the poison mode is
// on before core loads.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

process.env.DSV3_POISON_RECYCLED = '1';
const core = await import('@dsv3/core');
const { loadModel, raggedStep } = await import('../src/index.js');
const { compare } = await import('./helpers.js');
const { isResidentOutput } = await import('../../core/src/cpu/resident-outputs.js');

const coreFixtures = join(import.meta.dirname, '../../core/test/fixtures');
const goldens = core.readSafetensors(join(import.meta.dirname, 'fixtures/tiny-v3-goldens.safetensors'));

/** The engine memory in use as each main layer of `model` ends, over one run of `step`. */
async function residentAfterEachLayer(model: ReturnType<typeof loadModel>, step: () => unknown): Promise<number[]> {
  const after: number[] = [];
  const layers = model.model.layers.items;
  const saved = layers.map((l) => l.mlpResidual);
  layers.forEach((l, i) => {
    l.mlpResidual = (h1) => {
      const out = saved[i]!.call(l, h1);
      after.push(core.gemmInfo().residentBytes);
      return out;
    };
  });
  try {
    await step();
  } finally {
    layers.forEach((l, i) => {
      l.mlpResidual = saved[i]!;
    });
  }
  return after;
}

describe("a cached step's dead kernel outputs released (poisoned) on tiny-v3", () => {
  const model = loadModel(join(coreFixtures, 'tiny-v3'), { weights: 'f32' });
  // [2, 40] tokens: 80 rows of 128, so the step's activations are kernel outputs in the engine memory
  const ids = core.tensor(goldens.get('input_ids').data, { shape: [2, 40], dtype: 'i32' });
  const prefill = () =>
    core.noGrad(() => {
      const cache = model.newCache(96);
      return model.step(cache, [cache.allocateSequence(), cache.allocateSequence()], ids);
    });
  const logitsOnly = (logits: 'all' | 'last') =>
    core.noGrad(() => {
      const cache = model.newCache(96);
      return model.step(cache, [cache.allocateSequence(), cache.allocateSequence()], ids, { logits, hidden: false });
    });
  const bits = (t: { dataSync(): unknown }) => Array.from(new Uint32Array((t.dataSync() as Float32Array).buffer));

  it('logits match HF float32 (rel <= 1e-5) with every released block poisoned', () => {
    const out = prefill();
    const c = compare(out.logits.dataSync(), goldens.get('hf.logits').data as Float32Array);
    expect(c.rel).toBeLessThanOrEqual(1e-5);
  });

  it('repeated steps hold no more output blocks than the first; the kept logits and hidden states are host copies', () => {
    core.setGemmThreads(2);
    prefill();
    const held = core.residentOutputStats().blocks;
    for (let r = 0; r < 3; r++) {
      const out = prefill();
      for (const t of [out.logits, out.hidden])
        expect(isResidentOutput((t.storage as InstanceType<typeof core.CpuStorage>).data)).toBe(false);
    }
    // the MoE layers' lastRouting scores (kept by the model) are the only outputs a step leaves
    expect(core.residentOutputStats().blocks).toBeLessThanOrEqual(held + 3 * model.config.numHiddenLayers);
  });

  it("holds one layer's input at a time: the engine memory in use after each layer does not grow with depth", async () => {
    core.setGemmThreads(2);
    prefill();
    const after = await residentAfterEachLayer(model, prefill);
    expect(after.length).toBe(model.config.numHiddenLayers);
    // a layer's output is one [80, 128] f32 block (40 KiB): were the layers' outputs held until the
    // step's end, each layer would add one
    const block = 80 * model.config.hiddenSize * 4;
    for (let i = 2; i < after.length; i++) expect(after[i]! - after[1]!).toBeLessThan(block);
  });

  it('hidden: false returns the logits alone, bit for bit the same (all and last), and holds no more blocks', () => {
    core.setGemmThreads(2);
    const full = prefill();
    for (const which of ['all', 'last'] as const) {
      const want = core.noGrad(() => {
        const cache = model.newCache(96);
        return model.step(cache, [cache.allocateSequence(), cache.allocateSequence()], ids, { logits: which });
      });
      const out = logitsOnly(which);
      expect(Object.keys(out)).toEqual(['logits']);
      expect(out.logits.shape).toEqual(want.logits.shape);
      expect(bits(out.logits)).toEqual(bits(want.logits));
      expect(isResidentOutput((out.logits.storage as InstanceType<typeof core.CpuStorage>).data)).toBe(false);
    }
    expect(bits(logitsOnly('all').logits)).toEqual(bits(full.logits));
    const held = core.residentOutputStats().blocks;
    for (let r = 0; r < 3; r++) logitsOnly('last');
    expect(core.residentOutputStats().blocks).toBeLessThanOrEqual(held + 3 * model.config.numHiddenLayers);
  });
});

describe("a ragged step's dead kernel outputs released per layer (poisoned) on tiny-v3", () => {
  const model = loadModel(join(coreFixtures, 'tiny-v3'), { weights: 'f32' });
  const tokens = Array.from(goldens.get('input_ids').data as Int32Array);
  // the two golden sequences as one ragged batch: 80 rows, so the layers' activations are kernel outputs
  const ragged = () =>
    core.noGradAsync(async () => {
      const cache = model.newCache(96);
      const segs = [0, 1].map((b) => ({ seq: cache.allocateSequence(), tokens: tokens.slice(b * 40, (b + 1) * 40) }));
      return raggedStep(model, cache, segs, { logits: 'all' });
    });

  it('logits match HF float32 (rel <= 1e-5) with every released block poisoned', async () => {
    const out = await ragged();
    const c = compare(out.logits.dataSync(), goldens.get('hf.logits').data as Float32Array);
    expect(c.rel).toBeLessThanOrEqual(1e-5);
  });

  it("holds one layer's input at a time: the engine memory in use after each layer does not grow with depth", async () => {
    core.setGemmThreads(2);
    await ragged();
    const after = await residentAfterEachLayer(model, ragged);
    expect(after.length).toBe(model.config.numHiddenLayers);
    const block = 80 * model.config.hiddenSize * 4; // a layer's output [80, 128] f32
    for (let i = 2; i < after.length; i++) expect(after[i]! - after[1]!).toBeLessThan(block);
  });

  it('repeated ragged steps hold no more output blocks than the first', async () => {
    core.setGemmThreads(2);
    await ragged();
    const held = core.residentOutputStats().blocks;
    for (let r = 0; r < 3; r++) await ragged();
    // per step: the MoE layers' lastRouting scores (kept by the model), the last layer's output, the
    // head's logits and its norm's input (no scope around the head: the caller reads the logits)
    expect(core.residentOutputStats().blocks).toBeLessThanOrEqual(held + 3 * (model.config.numHiddenLayers + 3));
  });
});
