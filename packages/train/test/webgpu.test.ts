// Training on WebGPU (lavapipe in CI) computes what it computes on the CPU: two steps of the micro
// config (fp32 recipe, MTP, balance loss, bias update, gradient accumulation) give the same losses and
// gradient norms. Skips with a visible warning without an adapter, unless DSV3_REQUIRE_WEBGPU=1.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultBackend, type Backend } from '@dsv3/core';
import { webGpuForTests } from '@dsv3/core/node';
import { readMetrics, train, type StepRecord } from '../src/index.js';
import { microConfig, tempDir } from './helpers.js';

let gpu: (Backend & { dispose(): void }) | null = null;
beforeAll(async () => {
  gpu = await webGpuForTests('train');
}, 120_000);
afterAll(() => gpu?.dispose());

describe('training on WebGPU', () => {
  it('two steps match the CPU (loss rel ≤ 1e-5 at step 1, ≤ 1e-4 after an update)', async (ctx) => {
    if (!gpu) return ctx.skip();
    const config = microConfig({
      steps: 2,
      mtp: { depth: 1, lambda: 0.3 },
      intervals: { log: 1, eval: 100, evalBatches: 1, checkpoint: 100, keepLast: 1 },
    });
    const run = async (backend: Backend) => {
      const r = await train({ config, outDir: join(tempDir(backend.name), 'run'), backend });
      return readMetrics(r.metricsPath).filter((x): x is StepRecord => x.kind === 'train');
    };
    const cpu = await run(defaultBackend());
    const web = await run(gpu);
    const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);
    expect(rel(web[0]!.loss, cpu[0]!.loss)).toBeLessThanOrEqual(1e-5);
    expect(rel(web[0]!.gradNorm, cpu[0]!.gradNorm)).toBeLessThanOrEqual(1e-4);
    expect(rel(web[1]!.loss, cpu[1]!.loss)).toBeLessThanOrEqual(1e-4);
    expect(web.map((r) => r.maxVio)).toEqual(cpu.map((r) => r.maxVio));
  }, 600_000);
});
