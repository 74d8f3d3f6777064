// Engine throughput on a checkpoint (default tiny-v3): the continuously batched engine serving C
// concurrent greedy requests against the anchor, @dsv3/model's generate() run on the same requests one
// at a time, interleaved in the same run. Prints tokens/s and the ratio per concurrency.
// env: MODEL_DIR, CONCURRENCY (1,4,16), PROMPT (32), OUTPUT (32), ROUNDS (2), MTP (0), BACKEND (cpu |
// webgpu), TEMPERATURE (0 = greedy; > 0: seeded sampling, top-k 40, in both), ANCHOR (1; 0 = engine only)
import { join } from 'node:path';
import { defaultBackend, noGrad } from '@dsv3/core';
import { createNodeWebGpuBackend } from '@dsv3/core/node';
import { generate, loadModel } from '@dsv3/model';
import { defaultSamplingParams, EngineCore, ModelExecutor } from '../src/index.js';

const dir = process.env.MODEL_DIR ?? join(import.meta.dirname, '../../core/test/fixtures/tiny-v3');
const P = Number(process.env.PROMPT ?? 32);
const O = Number(process.env.OUTPUT ?? 32);
const rounds = Number(process.env.ROUNDS ?? 2);
const mtp = Number(process.env.MTP ?? 0);
const temperature = Number(process.env.TEMPERATURE ?? 0);
const withAnchor = process.env.ANCHOR !== '0';
const backend = process.env.BACKEND === 'webgpu' ? await createNodeWebGpuBackend() : defaultBackend();
const model = noGrad(() => loadModel(dir, { backend }));
const prompts = (c: number): number[][] =>
  Array.from({ length: c }, (_, i) => Array.from({ length: P }, (_, j) => 2 + ((i * 131 + j * 37) % 1000)));

async function engine(c: number): Promise<number> {
  const core = new EngineCore(new ModelExecutor(model, model.newCache(c * (P + O + 32), { blockSize: 16 })), {
    maxBatchedTokens: 512,
    maxRunningSeqs: c,
    prefixCaching: false,
    speculativeTokens: mtp,
  });
  prompts(c).forEach((p, i) =>
    core.add({
      id: `r${i}`,
      promptIds: p,
      params: { ...defaultSamplingParams, temperature, topK: 40, seed: i, maxTokens: O, ignoreEos: true },
    }),
  );
  const reads = (): number => ('readbacks' in backend ? (backend.readbacks as number) : 0);
  const [t0, r0] = [performance.now(), reads()];
  let steps = 0;
  for (; core.hasWork; steps++) await core.step();
  readsPerStep = (reads() - r0) / steps;
  return (c * O) / ((performance.now() - t0) / 1000);
}
let readsPerStep = 0;

async function anchor(c: number): Promise<number> {
  const t0 = performance.now();
  for (const [i, p] of prompts(c).entries())
    await generate(model, [p], { maxNewTokens: O, temperature, topK: 40, seed: i, stopTokens: [] });
  return (c * O) / ((performance.now() - t0) / 1000);
}

await engine(2); // warm-up
console.log(
  `${dir} on ${backend.name}: prompt ${P}, output ${O} tokens per request, ${rounds} interleaved rounds, temperature ${temperature}${mtp ? ', MTP drafting' : ''}`,
);
console.log(
  '| concurrent requests | engine tok/s | one-at-a-time generate tok/s | ratio | engine read-backs per step |\n|---|---|---|---|---|',
);
for (const c of (process.env.CONCURRENCY ?? '1,4,16').split(',').map(Number)) {
  const e: number[] = [];
  const a: number[] = [];
  for (let r = 0; r < rounds; r++) {
    if (withAnchor) a.push(await anchor(c));
    e.push(await engine(c));
  }
  const best = (x: number[]): number => Math.max(...x);
  const anchorCells = withAnchor ? `${best(a).toFixed(1)} | ${(best(e) / best(a)).toFixed(2)}` : '- | -';
  console.log(`| ${c} | ${best(e).toFixed(1)} | ${anchorCells} | ${readsPerStep.toFixed(2)} |`);
}
if ('dispose' in backend && typeof backend.dispose === 'function') backend.dispose();
