// The engine on WebGPU (lavapipe in CI): continuous batching with MTP drafting equals the CPU engine's
// greedy outputs. Skips with a visible warning without an adapter, unless DSV3_REQUIRE_WEBGPU=1.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '@dsv3/core';
import { webGpuForTests } from '@dsv3/core/node';
import { loadModel } from '@dsv3/model';
import { EngineCore, ModelExecutor } from '../src/index.js';
import { drain, greedy, makeCore, prompt, tinyDir } from './helpers.js';

let gpu: (Backend & { dispose(): void }) | null = null;
beforeAll(async () => {
  gpu = await webGpuForTests('serve');
}, 120_000);
afterAll(() => gpu?.dispose());

describe('EngineCore on WebGPU', () => {
  it('6 concurrent requests (chunked prefill, MTP drafts) equal the CPU engine', async (ctx) => {
    if (!gpu) return ctx.skip();
    const lengths = [3, 11, 6, 19, 1, 8];
    const add = (core: EngineCore): void =>
      lengths.forEach((n, i) => core.add({ id: `r${i}`, promptIds: prompt(n, i + 5), params: greedy(10) }));
    const cpuCore = makeCore({ maxBatchedTokens: 16, speculativeTokens: 1 });
    add(cpuCore);
    const want = (await drain(cpuCore)).tokens;
    const model = loadModel(tinyDir, { backend: gpu });
    const gpuCore = new EngineCore(new ModelExecutor(model, model.newCache(256 * 4, { blockSize: 4 })), {
      maxBatchedTokens: 16,
      speculativeTokens: 1,
    });
    add(gpuCore);
    const got = (await drain(gpuCore)).tokens;
    expect(lengths.map((_, i) => got.get(`r${i}`))).toEqual(lengths.map((_, i) => want.get(`r${i}`)));
    expect(gpuCore.stats().speculative.drafted[0]).toBeGreaterThan(0);
  }, 300_000);
});
