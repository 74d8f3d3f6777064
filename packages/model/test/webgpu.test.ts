// The model on WebGPU (lavapipe in CI): logits vs HF and greedy generation vs HF generate.
// Skips with a visible warning without an adapter, unless DSV3_REQUIRE_WEBGPU=1 (then fails).
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { noGrad, noGradAsync, readSafetensors, tensor } from '@dsv3/core';
import { webGpuForTests, type WebGpuBackend } from '@dsv3/core/node';
import { readTokens, sampleTokens, samplingTensors } from '@dsv3/mtp';
import { MoE } from '@dsv3/moe';
import { DeepseekV3ForCausalLM, generate, loadModel, parseConfig, PRESETS } from '../src/index.js';
import { compare } from './helpers.js';

const dir = join(import.meta.dirname, '../../core/test/fixtures/tiny-v3');
const g = readSafetensors(join(import.meta.dirname, 'fixtures/tiny-v3-goldens.safetensors'));
let gpu: WebGpuBackend | null = null;

beforeAll(async () => {
  gpu = await webGpuForTests('model');
}, 120_000);
afterAll(() => gpu?.dispose());

describe('tiny-v3 on WebGPU', () => {
  it('logits match HF (rel ≤ 1e-5, max abs ≤ 1e-3)', async (ctx) => {
    if (!gpu) return ctx.skip();
    const model = loadModel(dir, { backend: gpu });
    const ids = tensor(g.get('input_ids').data, { shape: [2, 40], dtype: 'i32', backend: gpu });
    const out = noGrad(() => model.forward(ids));
    const c = compare((await out.logits.data()) as Float32Array, g.get('hf.logits').data as Float32Array);
    console.log(`webgpu hf.logits: rel ${c.rel.toExponential(2)}, max abs ${c.maxAbs.toExponential(2)}`);
    expect(c.rel).toBeLessThanOrEqual(1e-5);
    expect(c.maxAbs).toBeLessThanOrEqual(1e-3);
  }, 300_000);

  it('bf16 weights stay bf16 on the GPU (decoded in the GEMM); logits match HF (rel ≤ 1e-5)', async (ctx) => {
    if (!gpu) return ctx.skip();
    // tiny-v3 is a BF16 checkpoint: keeping its bytes loses nothing against HF's float32 run of it.
    const model = loadModel(dir, { backend: gpu, weights: 'bf16' });
    const dtypes = new Map(model.namedParameters().map(([n, p]) => [n, p.value.dtype]));
    expect(dtypes.get('model.layers.0.self_attn.q_a_proj.weight')).toBe('bf16');
    expect(dtypes.get('model.layers.1.mlp.shared_experts.down_proj.weight')).toBe('bf16');
    expect(dtypes.get('model.layers.1.mlp.experts.0.down_proj.weight')).toBe('bf16'); // decoded in the grouped GEMM
    expect(dtypes.get('lm_head.weight')).toBe('bf16');
    expect(dtypes.get('model.layers.0.self_attn.o_proj.weight')).toBe('f32');
    expect(dtypes.get('model.layers.0.self_attn.kv_b_proj.weight')).toBe('f32');
    const ids = tensor(g.get('input_ids').data, { shape: [2, 40], dtype: 'i32', backend: gpu });
    const out = noGrad(() => model.forward(ids));
    const c = compare((await out.logits.data()) as Float32Array, g.get('hf.logits').data as Float32Array);
    console.log(`webgpu bf16 weights, hf.logits: rel ${c.rel.toExponential(2)}, max abs ${c.maxAbs.toExponential(2)}`);
    expect(c.rel).toBeLessThanOrEqual(1e-5);
    expect(() => loadModel(dir, { backend: gpu!, weights: 'fp8' })).toThrow(/w8a8/);
  }, 300_000);

  it("FP8 W8A8 on the GPU (block-scaled FP8 GEMMs) lands where DeepSeek's fp8 run does", async (ctx) => {
    if (!gpu) return ctx.skip();
    // Not compared with the CPU's W8A8 logits: a 1-ulp difference in one activation can flip its FP8
    // rounding, and this random network amplifies such flips to the size of the quantization effect
    // itself (measured 8.7%). Each projection equals the CPU's on the same input (fp8's WebGPU tests);
    // the model is held to the criterion the CPU's W8A8 meets (fp8-w8a8.test.ts). Routed experts run
    // in the grouped block-scaled FP8 GEMM over their checkpoint bytes, as on the CPU.
    const fp8Dir = join(import.meta.dirname, '../../core/test/fixtures/tiny-v3-fp8');
    const m = loadModel(fp8Dir, { fp8: 'w8a8', backend: gpu });
    const moe = m.namedModules().find(([, mod]) => mod instanceof MoE)![1] as MoE;
    expect(moe.fp8Experts!.gate.weights[0]!.q.dtype).toBe('fp8-e4m3');
    expect(moe.expertsAsModules).toBe(false);
    const x = tensor(g.get('input_ids').data, { shape: [2, 40], dtype: 'i32', backend: gpu });
    const all = (await noGrad(() => m.forward(x)).logits.data()) as Float32Array;
    const last = (t: Float32Array): Float32Array => {
      const o = new Float32Array(2048);
      o.set(t.subarray(39 * 1024, 40 * 1024), 0);
      o.set(t.subarray(79 * 1024, 80 * 1024), 1024);
      return o;
    };
    const w8a8 = last(all);
    const official = g.get('official.fp8_w8a8.last_logits').data as Float32Array;
    const hfDequant = last(g.get('hf.fp8_dequant.logits').data as Float32Array);
    const ours = compare(w8a8, hfDequant).rel;
    const theirs = compare(official, hfDequant).rel;
    const vsOfficial = compare(w8a8, official).rel;
    console.log(
      `webgpu w8a8: vs weight-only fp8 ${ours.toFixed(4)} (official ${theirs.toFixed(4)}), vs official ${vsOfficial.toFixed(4)}`,
    );
    expect(ours).toBeGreaterThan(0.5 * theirs);
    expect(ours).toBeLessThan(1.5 * theirs);
    expect(vsOfficial).toBeLessThan(1.1 * Math.hypot(ours, theirs));
  }, 300_000);

  it('greedy generation equals HF generate', async (ctx) => {
    if (!gpu) return ctx.skip();
    const model = loadModel(dir, { backend: gpu });
    const p = Array.from(g.get('prompt_ids').data as Int32Array);
    const want = Array.from(g.get('hf.generate').data as Int32Array);
    const out = await generate(model, [p.slice(0, 8), p.slice(8, 16)], {
      maxNewTokens: 24,
      temperature: 0,
      stopTokens: [],
    });
    expect(out.ids).toEqual([want.slice(0, 32), want.slice(32, 64)]);
  }, 300_000);

  // A dense-MLP model, and tiny-v3's shape with MoE layers (device routing and grouped GEMMs).
  const dense = parseConfig({ ...PRESETS['tiny-v3'], num_hidden_layers: 2, first_k_dense_replace: 2 });
  const withMoe = parseConfig({ ...PRESETS['tiny-v3'], num_hidden_layers: 2, first_k_dense_replace: 1 });

  for (const [name, config] of [
    ['dense MLP', dense],
    ['MoE layers', withMoe],
  ] as const) {
    it(`a decode step (${name}) reads back exactly once: the sampled ids`, async (ctx) => {
      if (!gpu) return ctx.skip();
      const model = new DeepseekV3ForCausalLM(config, { backend: gpu, seed: 5 });
      const cache = model.newCache(64);
      const seqs = [cache.allocate(), cache.allocate()];
      const tokens = (rows: number[][]) =>
        tensor(Int32Array.from(rows.flat()), { shape: [rows.length, rows[0]!.length], dtype: 'i32', backend: gpu! });
      const sampling = samplingTensors([{ temperature: 0.8, topK: 40, seed: 1, counter: 1 }, { temperature: 0 }], gpu!);
      await noGradAsync(async () => {
        const prefill = model.step(
          cache,
          seqs,
          tokens([
            [3, 9, 27, 81],
            [5, 25, 125, 7],
          ]),
          { logits: 'last' },
        );
        const first = await readTokens(sampleTokens(prefill.logits, sampling));
        const before = gpu!.readbacks;
        const { logits } = model.step(cache, seqs, tokens(first.map((t) => [t])));
        const next = await readTokens(sampleTokens(logits, sampling));
        expect(gpu!.readbacks - before).toBe(1);
        expect(next).toHaveLength(2);
      });
      cache.dispose();
    }, 300_000);
  }

  for (const [name, load] of [
    ['bf16 weights', () => loadModel(dir, { backend: gpu!, weights: 'bf16' })],
    ['f16 weights', () => loadModel(dir, { backend: gpu!, weights: 'f16' })],
    [
      'FP8 W8A8',
      () =>
        loadModel(join(import.meta.dirname, '../../core/test/fixtures/tiny-v3-fp8'), { fp8: 'w8a8', backend: gpu! }),
    ],
  ] as const) {
    it(`a decode step of tiny-v3 with ${name} (experts in their stored precision) reads back only the ids`, async (ctx) => {
      if (!gpu || (name === 'f16 weights' && !gpu.features.shaderF16)) return ctx.skip();
      const model = load();
      const cache = model.newCache(32);
      const seqs = [cache.allocate()];
      const ids = (t: number[]) => tensor(Int32Array.from(t), { shape: [1, t.length], dtype: 'i32', backend: gpu! });
      const greedy = samplingTensors([{ temperature: 0 }], gpu!);
      await noGradAsync(async () => {
        const first = await readTokens(
          sampleTokens(model.step(cache, seqs, ids([3, 9, 27]), { logits: 'last' }).logits, greedy),
        );
        const before = gpu!.readbacks;
        const next = await readTokens(sampleTokens(model.step(cache, seqs, ids(first)).logits, greedy));
        expect(gpu!.readbacks - before).toBe(1);
        expect(next).toHaveLength(1);
      });
      cache.dispose();
    }, 300_000);
  }

  it('seeded sampling generates the same tokens on WebGPU as on the CPU (dense MLP)', async (ctx) => {
    if (!gpu) return ctx.skip();
    const prompts = [
      [3, 9, 27, 81, 243],
      [5, 25, 125],
    ];
    const opts = { maxNewTokens: 6, temperature: 0.9, topK: 64, topP: 0.95, seed: 11, stopTokens: [] };
    const onCpu = await generate(new DeepseekV3ForCausalLM(dense, { seed: 5 }), prompts, opts);
    const onGpu = await generate(new DeepseekV3ForCausalLM(dense, { backend: gpu, seed: 5 }), prompts, opts);
    expect(onGpu.ids).toEqual(onCpu.ids);
  }, 300_000);

  it('sampled MTP speculative decoding (drafts and verification on the device) generates the CPU tokens', async (ctx) => {
    if (!gpu) return ctx.skip();
    const prompts = [[3, 9, 27, 81, 243]];
    const opts = { maxNewTokens: 8, temperature: 0.9, topK: 64, seed: 11, stopTokens: [], mtpDraftTokens: 1 };
    const onCpu = await generate(new DeepseekV3ForCausalLM(dense, { seed: 5 }), prompts, opts);
    const onGpu = await generate(new DeepseekV3ForCausalLM(dense, { backend: gpu, seed: 5 }), prompts, opts);
    expect(onGpu.ids).toEqual(onCpu.ids);
    expect(onGpu.stats!.steps).toBeGreaterThan(0);
  }, 300_000);
});
