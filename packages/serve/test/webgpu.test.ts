// The engine on WebGPU (lavapipe in CI): it samples where the logits are, so a decode step reads back
// only the token ids (counted on the backend); greedy and seeded outputs equal the CPU engine's, with
// continuous batching and MTP drafting. Skips with a visible warning without an adapter, unless
// DSV3_REQUIRE_WEBGPU=1.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WebGpuBackend } from '@dsv3/core';
import { webGpuForTests } from '@dsv3/core/node';
import { loadModel } from '@dsv3/model';
import {
  defaultSamplingParams,
  EngineCore,
  ModelExecutor,
  type EngineCoreOptions,
  type SamplingParams,
} from '../src/index.js';
import { drain, greedy, makeCore, oracleExecutor, prompt, tinyDir } from './helpers.js';

const sampled = (seed: number, maxTokens: number): SamplingParams => ({
  ...defaultSamplingParams,
  temperature: 0.8,
  topK: 40,
  topP: 0.9,
  seed,
  maxTokens,
  ignoreEos: true,
});

/** Records every read from the device (dtype and element count) while `body` runs. */
async function reads<T>(body: () => Promise<T>): Promise<{ result: T; reads: string[] }> {
  const be = gpu!;
  const read = be.read.bind(be);
  const log: string[] = [];
  be.read = (storage, dtype, size) => {
    log.push(`${dtype}[${size}]`);
    return read(storage, dtype, size);
  };
  try {
    const before = be.readbacks;
    const result = await body();
    expect(be.readbacks - before).toBe(log.length);
    return { result, reads: log };
  } finally {
    be.read = read;
  }
}

function gpuCore(opts: EngineCoreOptions): EngineCore {
  const model = loadModel(tinyDir, { backend: gpu! });
  return new EngineCore(new ModelExecutor(model, model.newCache(256 * 4, { blockSize: 4 })), opts);
}

let gpu: WebGpuBackend | null = null;
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
    const core = gpuCore({ maxBatchedTokens: 16, speculativeTokens: 1 });
    add(core);
    const got = new Map<string, number[]>();
    while (core.hasWork) {
      // the picks, the verification and the next drafts come back in one read of ids
      const step = await reads(() => core.step());
      expect(step.reads).toHaveLength(1);
      expect(step.reads[0]).toMatch(/^i32\[\d+\]$/);
      for (const o of step.result) got.set(o.id, [...(got.get(o.id) ?? []), ...o.newTokens]);
    }
    expect(lengths.map((_, i) => got.get(`r${i}`))).toEqual(lengths.map((_, i) => want.get(`r${i}`)));
    expect(core.stats().speculative).toEqual(cpuCore.stats().speculative);
    expect(core.stats().speculative.drafted[0]).toBeGreaterThan(0);
  }, 300_000);

  it('greedy speculative decoding accepts the same drafts as on the CPU (oracle drafts)', async (ctx) => {
    if (!gpu) return ctx.skip();
    const prompts = [prompt(6, 21), prompt(2, 22), prompt(9, 23)];
    const plain = makeCore();
    prompts.forEach((p, i) => plain.add({ id: `${i}`, promptIds: p, params: greedy(8, { ignoreEos: true }) }));
    const ref = (await drain(plain)).tokens;
    const next = new Map<string, number>();
    prompts.forEach((p, i) =>
      ref.get(`${i}`)!.forEach((t, j) => next.set([...p, ...ref.get(`${i}`)!.slice(0, j)].join(','), t)),
    );
    const run = async (core: EngineCore): Promise<Map<string, number[]>> => {
      prompts.forEach((p, i) => core.add({ id: `${i}`, promptIds: p, params: greedy(8, { ignoreEos: true }) }));
      return (await drain(core)).tokens;
    };
    // the CPU drafts with the picks too, so the oracle sees the same draft rows in the same order
    const cpu = new EngineCore(oracleExecutor(makeCore().executor as ModelExecutor, next), {
      speculativeTokens: 1,
      draftWithPicks: true,
    });
    const model = loadModel(tinyDir, { backend: gpu });
    const onGpu = new EngineCore(
      oracleExecutor(new ModelExecutor(model, model.newCache(64 * 4, { blockSize: 4 })), next),
      {
        speculativeTokens: 1,
      },
    );
    expect(await run(cpu)).toEqual(ref);
    expect(await run(onGpu)).toEqual(ref);
    const spec = onGpu.stats().speculative;
    expect(spec).toEqual(cpu.stats().speculative);
    expect(spec.accepted[0]).toBeGreaterThan(0);
    expect(spec.accepted[0]).toBeLessThan(spec.drafted[0]!);
  }, 300_000);

  it('a decode step of greedy and seeded requests reads back once (the ids); outputs equal the CPU engine', async (ctx) => {
    if (!gpu) return ctx.skip();
    const add = (core: EngineCore): void => {
      core.add({ id: 'g', promptIds: prompt(5, 1), params: greedy(6, { ignoreEos: true }) });
      core.add({ id: 's', promptIds: prompt(3, 2), params: sampled(11, 6) });
      core.add({ id: 't', promptIds: prompt(8, 3), params: sampled(12, 6) });
    };
    const cpuCore = makeCore();
    add(cpuCore);
    const want = (await drain(cpuCore)).tokens;
    const core = gpuCore({});
    add(core);
    const got = new Map<string, number[]>();
    const steps: string[][] = [];
    while (core.hasWork) {
      const step = await reads(() => core.step());
      steps.push(step.reads);
      for (const o of step.result) got.set(o.id, [...(got.get(o.id) ?? []), ...o.newTokens]);
    }
    // every step (the prefill too) reads back one i32 id per running request, nothing else
    expect(steps).toEqual(steps.map(() => ['i32[3]']));
    expect(got).toEqual(want);
  }, 300_000);
});
