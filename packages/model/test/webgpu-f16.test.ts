// The f16 compute mode on WebGPU (weights 'f16': projections f16 on the device, f32 accumulation,
// activations f32 between ops) against the CPU's f32 run, and its refusal where it cannot run: an
// adapter without shader-f16 (the same lavapipe adapter with the feature withheld) and the CPU.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { noGrad, readSafetensors, tensor } from '@dsv3/core';
import { webGpuForTests, type WebGpuBackend } from '@dsv3/core/node';
import {
  DeepseekV3ForCausalLM,
  generate,
  loadModel,
  parseConfig,
  PRESETS,
  useDeviceHalfWeights,
} from '../src/index.js';
import { compare } from './helpers.js';

const dir = join(import.meta.dirname, '../../core/test/fixtures/tiny-v3');
const g = readSafetensors(join(import.meta.dirname, 'fixtures/tiny-v3-goldens.safetensors'));
let gpu: WebGpuBackend | null = null;
let plain: WebGpuBackend | null = null;

beforeAll(async () => {
  gpu = await webGpuForTests('model f16');
  if (gpu) plain = await webGpuForTests('model f16', { withholdFeatures: ['shader-f16'] });
}, 120_000);
afterAll(() => {
  gpu?.dispose();
  plain?.dispose();
});

const logitsOf = async (model: DeepseekV3ForCausalLM, backend?: WebGpuBackend): Promise<Float32Array> => {
  const ids = tensor(g.get('input_ids').data, { shape: [2, 40], dtype: 'i32', ...(backend && { backend }) });
  return (await noGrad(() => model.forward(ids)).logits.data()) as Float32Array;
};

describe('the f16 compute mode on WebGPU', () => {
  it('tiny-v3 with f16 weights: logits vs the CPU f32 (rel ≤ 1e-5) and HF; greedy tokens equal HF generate', async (ctx) => {
    if (!gpu?.features.shaderF16) return ctx.skip();
    const model = loadModel(dir, { backend: gpu, weights: 'f16' });
    const dtypes = new Map(model.namedParameters().map(([n, p]) => [n, p.value.dtype]));
    expect(dtypes.get('model.layers.0.self_attn.q_a_proj.weight')).toBe('f16');
    expect(dtypes.get('model.layers.1.mlp.shared_experts.down_proj.weight')).toBe('f16');
    expect(dtypes.get('lm_head.weight')).toBe('f16');
    expect(dtypes.get('model.layers.1.mlp.experts.0.down_proj.weight')).toBe('f16'); // read by the grouped GEMM
    expect(dtypes.get('model.layers.0.self_attn.o_proj.weight')).toBe('f32');
    // tiny-v3 is a BF16 checkpoint: bf16's 8-bit significands fit f16's 11 bits, so only weights
    // below f16's normal range (|w| < 2^-14) lose bits; the logits stay at f32 accuracy.
    const cpuLogits = await logitsOf(loadModel(dir));
    const vsCpu = compare(await logitsOf(model, gpu), cpuLogits);
    const vsHf = compare(await logitsOf(model, gpu), g.get('hf.logits').data as Float32Array);
    console.log(
      `webgpu f16 weights: vs cpu f32 rel ${vsCpu.rel.toExponential(2)} (max abs ${vsCpu.maxAbs.toExponential(2)}), vs hf rel ${vsHf.rel.toExponential(2)}`,
    );
    expect(vsCpu.rel).toBeLessThanOrEqual(1e-5);
    expect(vsHf.rel).toBeLessThanOrEqual(1e-5);
    const p = Array.from(g.get('prompt_ids').data as Int32Array);
    const want = Array.from(g.get('hf.generate').data as Int32Array);
    const out = await generate(model, [p.slice(0, 8), p.slice(8, 16)], {
      maxNewTokens: 24,
      temperature: 0,
      stopTokens: [],
    });
    expect(out.ids).toEqual([want.slice(0, 32), want.slice(32, 64)]);
  }, 300_000);

  it('f32 weights rounded to f16 (useDeviceHalfWeights): logits within f16 rounding of the CPU f32', async (ctx) => {
    if (!gpu?.features.shaderF16) return ctx.skip();
    // Random f32 weights do not fit f16: each projection weight is rounded (u = 2^-11), which moves
    // the logits of this 2-layer MoE model by about u (measured below); bound 2u = 9.8e-4.
    const config = parseConfig({ ...PRESETS['tiny-v3'], num_hidden_layers: 2, first_k_dense_replace: 1 });
    const onCpu = new DeepseekV3ForCausalLM(config, { seed: 7 });
    const onGpu = new DeepseekV3ForCausalLM(config, { backend: gpu, seed: 7 });
    useDeviceHalfWeights(onGpu, 'f16');
    expect(onGpu.lmHead.weight.value.dtype).toBe('f16');
    const expert = onGpu.namedParameters().find(([n]) => n.endsWith('mlp.experts.0.up_proj.weight'))!;
    expect(expert[1].value.dtype).toBe('f16');
    const c = compare(await logitsOf(onGpu, gpu), await logitsOf(onCpu));
    console.log(`webgpu f16 (rounded f32 weights) vs cpu f32: rel ${c.rel.toExponential(2)}`);
    expect(c.rel).toBeGreaterThan(0); // the rounding is really there
    expect(c.rel).toBeLessThanOrEqual(2 * 2 ** -11);
  }, 300_000);

  it('an adapter without shader-f16 refuses f16 with a clear error and runs f32', async (ctx) => {
    if (!plain) return ctx.skip();
    expect(plain.features.shaderF16).toBe(false);
    expect(() => loadModel(dir, { backend: plain!, weights: 'f16' })).toThrow(
      /loadModel weights 'f16': f16 compute needs the WebGPU feature 'shader-f16'/,
    );
    const c = compare(
      await logitsOf(loadModel(dir, { backend: plain }), plain),
      g.get('hf.logits').data as Float32Array,
    );
    expect(c.rel).toBeLessThanOrEqual(1e-5);
  }, 300_000);

  it('dsv3-model generate --backend webgpu --dtype f16 reproduces HF greedy generation', async (ctx) => {
    if (!gpu?.features.shaderF16) return ctx.skip();
    const root = join(import.meta.dirname, '../../..');
    const want = Array.from(g.get('hf.generate').data as Int32Array).slice(0, 32);
    const args = ['--conditions=@dsv3/source', join(root, 'packages/model/src/cli.ts'), 'generate', dir];
    args.push('--prompt-ids', want.slice(0, 8).join(','), '--max-new-tokens', '24', '--temperature', '0');
    args.push('--backend', 'webgpu', '--dtype', 'f16', '--json');
    const out = execFileSync(join(root, 'node_modules/.bin/tsx'), args, {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    expect(JSON.parse(out)).toEqual({ ids: [want] });
  }, 300_000);

  it('the CPU refuses f16 weights, naming the alternatives', () => {
    expect(() => loadModel(dir, { weights: 'f16' })).toThrow(/WebGPU f16 compute mode; on cpu use weights 'bf16'/);
  });
});
