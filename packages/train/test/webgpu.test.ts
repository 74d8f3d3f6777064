// Training on WebGPU (lavapipe in CI) computes what it computes on the CPU: two steps of the micro
// config (fp32 recipe, MTP, balance loss, bias update, gradient accumulation) give the same losses and
// gradient norms; a step reads back nothing but its logged scalars, once. Skips with a visible warning without an adapter, unless DSV3_REQUIRE_WEBGPU=1.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdamW, defaultBackend, tensor, type Backend } from '@dsv3/core';
import { MoE } from '@dsv3/moe';
import { webGpuForTests } from '@dsv3/core/node';
import { expectSameBits, relativeError } from '@dsv3/core/testing';
import { buildModel, readMetrics, train, trainStep, type StepRecord } from '../src/index.js';
import { microConfig, tempDir } from './helpers.js';

let gpu: (Backend & { dispose(): void; readbacks: number }) | null = null;
beforeAll(async () => {
  gpu = (await webGpuForTests('train')) as typeof gpu;
}, 120_000);
afterAll(() => gpu?.dispose());

describe('training on WebGPU', () => {
  /** Two steps of the micro config (MoE, MTP) on the CPU and on WebGPU: losses, norms and weights. */
  async function twoSteps(precision: 'fp32' | 'bf16' | 'fp8') {
    const config = microConfig({
      steps: 2,
      precision,
      mtp: { depth: 1, lambda: 0.3 },
      intervals: { log: 1, eval: 100, evalBatches: 1, checkpoint: 100, keepLast: 1 },
    });
    const params: Map<string, Float32Array>[] = [];
    const run = async (backend: Backend) => {
      const r = await train({ config, outDir: join(tempDir(backend.name), 'run'), backend });
      const values = new Map<string, Float32Array>();
      for (const [n, p] of r.model.namedParameters()) values.set(n, (await p.value.data()) as Float32Array);
      params.push(values);
      return readMetrics(r.metricsPath).filter((x): x is StepRecord => x.kind === 'train');
    };
    const cpu = await run(defaultBackend());
    const web = await run(gpu!);
    // The weights after both updates, over every parameter at once.
    const flat = (m: Map<string, Float32Array>) => Float32Array.from([...m.values()].flatMap((a) => [...a]));
    const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);
    return {
      cpu,
      web,
      paramErr: relativeError(flat(params[1]!), flat(params[0]!)),
      loss: [rel(web[0]!.loss, cpu[0]!.loss), rel(web[1]!.loss, cpu[1]!.loss)],
      gradNorm: rel(web[0]!.gradNorm, cpu[0]!.gradNorm),
    };
  }

  it('two steps match the CPU (loss rel ≤ 1e-5 at step 1, ≤ 1e-4 after an update; weights ≤ 1e-5)', async (ctx) => {
    if (!gpu) return ctx.skip();
    const r = await twoSteps('fp32');
    console.log(`webgpu vs cpu after 2 steps: parameters rel ${r.paramErr.toExponential(2)}`);
    expect(r.paramErr).toBeLessThanOrEqual(1e-5); // measured 1.6e-6 to 2.8e-6
    expect(r.loss[0]).toBeLessThanOrEqual(1e-5);
    expect(r.gradNorm).toBeLessThanOrEqual(1e-4);
    expect(r.loss[1]).toBeLessThanOrEqual(1e-4);
    expect(r.web.map((x) => x.maxVio)).toEqual(r.cpu.map((x) => x.maxVio));
  }, 600_000);

  it('the bf16 recipe (routed experts on the grouped GEMM) trains on WebGPU as on the CPU', async (ctx) => {
    if (!gpu) return ctx.skip();
    const r = await twoSteps('bf16');
    console.log(
      `bf16 recipe, webgpu vs cpu after 2 steps: parameters rel ${r.paramErr.toExponential(2)}, loss ${r.loss.map((l) => l.toExponential(2)).join(' / ')}, grad norm ${r.gradNorm.toExponential(2)}`,
    );
    // bf16 rounding turns a 1-ulp f32 difference between the backends into a 2^-8 one wherever it
    // flips a rounding, and Adam's first updates are sign-like on small gradients (measured 9.3e-6)
    expect(r.paramErr).toBeLessThanOrEqual(3e-5);
    expect(r.loss[0]).toBeLessThanOrEqual(1e-5);
    expect(r.gradNorm).toBeLessThanOrEqual(1e-4);
    expect(r.loss[1]).toBeLessThanOrEqual(1e-4);
  }, 600_000);

  it('the fp8 recipe (routed experts on the grouped FP8 kernels) trains on WebGPU as on the CPU', async (ctx) => {
    if (!gpu) return ctx.skip();
    const r = await twoSteps('fp8');
    console.log(
      `fp8 recipe, webgpu vs cpu after 2 steps: parameters rel ${r.paramErr.toExponential(2)}, loss ${r.loss.map((l) => l.toExponential(2)).join(' / ')}, grad norm ${r.gradNorm.toExponential(2)}`,
    );
    // an ulp apart before an E4M3 rounding can flip a byte, as bf16's can (measured 1.5e-6)
    expect(r.paramErr).toBeLessThanOrEqual(3e-5);
    expect(r.loss[0]).toBeLessThanOrEqual(1e-5);
    expect(r.gradNorm).toBeLessThanOrEqual(1e-4);
    expect(r.loss[1]).toBeLessThanOrEqual(1e-4);
  }, 600_000);

  it('a training step reads back once: its logged scalars, the gradient norm and the expert loads', async (ctx) => {
    if (!gpu) return ctx.skip();
    // MoE layers (device routing), MTP, the balance loss and the bias update: all on the device.
    const config = microConfig({ mtp: { depth: 1, lambda: 0.3 } });
    const model = buildModel(config, gpu);
    model.train();
    const params = model.parameters();
    const optimizer = new AdamW(params, { stateDType: 'bf16' });
    const seq = (s: number) => Int32Array.from({ length: 16 }, (_, j) => (s * 31 + j * 7) % 250);
    const inputs = {
      sequences: [seq(1), seq(2), seq(3), seq(4)],
      microBatch: 2,
      lr: 1e-3,
      mtpLambda: 0.3,
      seqAuxAlpha: 1e-4,
      biasUpdateSpeed: 1e-3,
      clipNorm: 0.5,
    };
    const be = gpu as Backend;
    const read = be.read.bind(be);
    let reads = 0;
    be.read = (...a) => {
      reads++;
      return read(...a);
    };
    try {
      const r = await trainStep(model, [optimizer], params, inputs);
      expect(reads).toBe(1);
      expect(r.gradNorm).toBeGreaterThan(0.5); // clipped on the device
      expect(Number.isFinite(r.loss) && r.mtpLoss !== null && r.balanceLoss > 0).toBe(true);
      expect(r.maxVio).toHaveLength(2);
    } finally {
      be.read = read;
    }
  }, 300_000);

  it('NaN gate scores stop a step with the layer named, in its one read-back, before the update', async (ctx) => {
    if (!gpu) return ctx.skip();
    const model = buildModel(microConfig(), gpu);
    model.train();
    const params = model.parameters();
    const optimizer = new AdamW(params);
    const [name, moe] = model.namedModules().find(([, m]) => m instanceof MoE) as [string, MoE];
    const w = moe.gate.weight;
    const bad = new Float32Array(w.value.size);
    bad[5] = Number.NaN; // one expert's router row → that expert's score is NaN for every token
    w.value = tensor(bad, { shape: w.value.shape, backend: gpu }).requireGrad();
    const before = (await model.namedParameters()[0]![1].value.data()).slice();
    const reads = gpu.readbacks;
    const seq = Int32Array.from({ length: 16 }, (_, j) => (j * 7) % 250);
    const inputs = {
      sequences: [seq, seq],
      microBatch: 2,
      lr: 1e-3,
      mtpLambda: 0,
      seqAuxAlpha: 0,
      biasUpdateSpeed: 0,
      clipNorm: 1,
    };
    await expect(trainStep(model, [optimizer], params, inputs)).rejects.toThrow(
      new RegExp(`MoE layer ${name.replace(/\./g, '\\.')}: the gate scores of 32 token\\(s\\) held NaN`),
    );
    expect(gpu.readbacks - reads).toBe(1);
    expectSameBits(
      await model.namedParameters()[0]![1].value.data(),
      before,
      'first parameter after the rejected step',
    );
  }, 300_000);
});
