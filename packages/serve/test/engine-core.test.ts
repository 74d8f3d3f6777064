// The batched engine against single-request greedy generate of @dsv3/model: continuous batching,
// chunked prefill, prefix-cache hits and preemption never change greedy outputs; aborts return blocks.
import { describe, expect, it } from 'vitest';
import { generate } from '@dsv3/model';
import { EngineCore, type ModelExecutor } from '../src/index.js';
import { drain, greedy, makeCore, oracleExecutor, prompt, tinyModel } from './helpers.js';

const lengths = [3, 17, 8, 30, 1, 12, 25, 5, 9, 40, 2, 14, 21, 7, 33, 11];
const maxNew = [12, 5, 20, 8, 16, 3, 10, 24, 6, 9, 18, 4, 7, 15, 2, 11];
const prompts = lengths.map((n, i) => prompt(n, i + 1));

async function reference(): Promise<number[][]> {
  const model = tinyModel();
  const out: number[][] = [];
  for (const [i, p] of prompts.entries())
    out.push((await generate(model, [p], { maxNewTokens: maxNew[i]!, temperature: 0, stopTokens: [] })).newTokens[0]!);
  return out;
}

let refs: Promise<number[][]> | null = null;
const want = (): Promise<number[][]> => (refs ??= reference());

async function runAll(core: ReturnType<typeof makeCore>): Promise<number[][]> {
  prompts.forEach((p, i) => core.add({ id: `r${i}`, promptIds: p, params: greedy(maxNew[i]!) }));
  const { tokens } = await drain(core);
  return prompts.map((_, i) => tokens.get(`r${i}`)!);
}

describe('EngineCore (tiny-v3, greedy)', () => {
  it('16 concurrent requests of different lengths equal single-request generate', async () => {
    const core = makeCore({ maxBatchedTokens: 64, maxRunningSeqs: 16 });
    expect(await runAll(core)).toEqual(await want());
    expect(core.stats().freeBlocks).toBe(core.stats().totalBlocks);
  }, 120_000);

  it('small token budget (chunked prefill) and few running slots change nothing', async () => {
    const core = makeCore({ maxBatchedTokens: 7, maxRunningSeqs: 5 });
    expect(await runAll(core)).toEqual(await want());
  }, 120_000);

  it('prefix-cache hits change nothing and are counted', async () => {
    const core = makeCore({ maxBatchedTokens: 64, maxRunningSeqs: 16 });
    const first = await runAll(core);
    const hitsBefore = core.stats().prefixHits;
    // the same prompts again, now served partly from the prefix cache
    prompts.forEach((p, i) => core.add({ id: `again${i}`, promptIds: p, params: greedy(maxNew[i]!) }));
    const { tokens } = await drain(core);
    expect(prompts.map((_, i) => tokens.get(`again${i}`)!)).toEqual(first);
    expect(first).toEqual(await want());
    expect(core.stats().prefixHits).toBeGreaterThan(hitsBefore);
    expect(core.blocks.cachedBlocks).toBeGreaterThan(0);
    expect(core.stats().freeBlocks).toBe(core.stats().totalBlocks);
  }, 120_000);

  it('preemption by recomputation when blocks run out changes nothing', async () => {
    // 24 blocks of 4 tokens: far less than 16 requests need at once
    const core = makeCore({ maxBatchedTokens: 64, maxRunningSeqs: 16, blocks: 24, prefixCaching: false });
    expect(await runAll(core)).toEqual(await want());
    expect(core.stats().preemptions).toBeGreaterThan(0);
    expect(core.executor.cache.freeBlocks).toBe(24);
  }, 120_000);

  it('MTP speculative decoding (batched drafts, verification, rollback) changes nothing', async () => {
    const core = makeCore({ maxBatchedTokens: 64, maxRunningSeqs: 16, speculativeTokens: 1 });
    expect(await runAll(core)).toEqual(await want());
    const spec = core.stats().speculative;
    expect(spec.drafted[0]).toBeGreaterThan(50);
    expect(spec.accepted[0] ?? 0).toBeLessThanOrEqual(spec.drafted[0]!);
    console.log(`MTP acceptance on random tiny-v3 weights: ${spec.accepted[0] ?? 0}/${spec.drafted[0]}`);
    expect(core.executor.cache.freeBlocks).toBe(core.executor.cache.numBlocks);
  }, 120_000);

  it('accepted drafts (an oracle proposing the right token 70% of the time) change nothing', async () => {
    const ref = await want();
    const next = new Map<string, number>();
    prompts.forEach((p, i) => ref[i]!.forEach((t, j) => next.set([...p, ...ref[i]!.slice(0, j)].join(','), t)));
    const inner = makeCore().executor as ModelExecutor;
    const oracle = oracleExecutor(inner, next);
    const core = new EngineCore(oracle, {
      maxBatchedTokens: 64,
      maxRunningSeqs: 16,
      speculativeTokens: 1,
      draftWithPicks: true,
    });
    expect(await runAll(core)).toEqual(ref);
    const spec = core.stats().speculative;
    console.log(`oracle drafts accepted: ${spec.accepted[0]}/${spec.drafted[0]}`);
    expect(spec.accepted[0]).toBeGreaterThan(spec.drafted[0]! * 0.4);
    expect(spec.accepted[0]).toBeLessThan(spec.drafted[0]!);
    expect(inner.cache.freeBlocks).toBe(inner.cache.numBlocks);
  }, 120_000);

  it('MTP drafting with chunked prefill and preemption changes nothing', async () => {
    const core = makeCore({
      maxBatchedTokens: 9,
      maxRunningSeqs: 16,
      blocks: 24,
      speculativeTokens: 1,
      draftWithPicks: true,
    });
    expect(await runAll(core)).toEqual(await want());
    expect(core.stats().preemptions).toBeGreaterThan(0);
    expect(core.executor.cache.freeBlocks).toBe(24);
  }, 120_000);

  it('an aborted request returns every block at once', async () => {
    const core = makeCore({ maxBatchedTokens: 16, prefixCaching: false });
    const start = core.executor.cache.freeBlocks;
    core.add({ id: 'a', promptIds: prompt(40, 3), params: greedy(50) });
    core.add({ id: 'b', promptIds: prompt(9, 4), params: greedy(50) });
    await core.step();
    await core.step();
    await core.step();
    expect(core.executor.cache.freeBlocks).toBeLessThan(start);
    core.abort('a');
    core.abort('a'); // idempotent
    core.abort('b');
    expect(core.executor.cache.freeBlocks).toBe(start);
    expect(core.hasWork).toBe(false);
  }, 60_000);

  it('rejects bad requests with clear messages', () => {
    const core = makeCore({ blocks: 8 });
    expect(() => core.add({ id: 'x', promptIds: [], params: greedy(1) })).toThrow(/empty/);
    expect(() => core.add({ id: 'x', promptIds: [5000], params: greedy(1) })).toThrow(/outside the vocabulary/);
    expect(() => core.add({ id: 'x', promptIds: [5], params: greedy(100) })).toThrow(
      /exceeds the context of 32 tokens/,
    );
    expect(() => core.add({ id: 'x', promptIds: [5], params: { ...greedy(1), temperature: -1 } })).toThrow(
      /temperature/,
    );
  });
});
