// MTP speculative decoding on a disaggregated decode worker: the prefill worker runs the MTP module
// over the prompt and ships its cache layer with the main layers' pages, so the decode worker drafts
// from its first step exactly as the colocated engine does — same draft logits step by step, and
// greedy outputs equal to plain greedy decoding. Router and workers run in this process on loopback.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { relativeError } from '@dsv3/core/testing';
import {
  AsyncEngine,
  DecodeWorker,
  EngineCore,
  ModelExecutor,
  PrefillWorker,
  RouterCore,
  argmax,
  type Executor,
} from '../src/index.js';
import { collect } from './disagg-helpers.js';
import { drain, greedy, makeCore, prompt, tinyModel } from './helpers.js';
import { tinyTokenizer } from './tokenizer.js';

const model = tinyModel();
const V = model.config.vocabSize;

/** An executor whose MTP draft logits (one row per drafted sequence) are recorded call by call. */
function recording(blocks = 64): { exec: ModelExecutor; drafts: Float32Array[] } {
  const exec = new ModelExecutor(model, model.newCache(blocks * 4, { blockSize: 4 }));
  const drafts: Float32Array[] = [];
  const draft = exec.draft.bind(exec);
  exec.draft = async (inputs, ids) => {
    const logits = await draft(inputs, ids);
    const host = (await logits.data()) as Float32Array;
    for (let i = 0; i < logits.shape[0]!; i++) drafts.push(host.slice(i * V, (i + 1) * V));
    return logits;
  };
  return { exec, drafts };
}

describe('disaggregated serving with MTP speculative decoding', () => {
  const prefillExec = recording();
  const decodeExec = recording();
  const prefill = new PrefillWorker(prefillExec.exec, { maxModelLen: 128, speculativeTokens: 1 });
  const decode = new DecodeWorker(decodeExec.exec, {
    maxModelLen: 128,
    speculativeTokens: 1,
    maxBatchedTokens: 64,
    maxRunningSeqs: 16,
  });
  const router = new RouterCore({ healthIntervalMs: 60_000 });
  const engine = new AsyncEngine(router, tinyTokenizer());
  let decodeUrl = '';
  beforeAll(async () => {
    await router.register('prefill', await prefill.app.listen({ port: 0, host: '127.0.0.1' }));
    decodeUrl = await decode.app.listen({ port: 0, host: '127.0.0.1' });
    await router.register('decode', decodeUrl);
  });
  afterAll(async () => {
    await router.close();
    await prefill.app.close();
    await decode.app.close();
  });

  it('the decode worker drafts as the colocated engine does, from its first step', async () => {
    for (const [n, maxNew] of [
      [9, 6],
      [1, 4],
      [23, 5],
    ] as const) {
      const p = prompt(n, n);
      // colocated, drafting with MTP
      const colo = recording();
      const core = new EngineCore(colo.exec as Executor, { speculativeTokens: 1 });
      core.add({ id: 'c', promptIds: p, params: greedy(maxNew, { ignoreEos: true }) });
      const want = (await drain(core)).tokens.get('c')!;
      decodeExec.drafts.length = 0;
      const got = await collect(engine.generate({ promptIds: p, params: greedy(maxNew, { ignoreEos: true }) }));
      expect(got.tokens).toEqual(want);
      // every draft of the decode worker, the first one included (which needs the prompt's MTP cache)
      expect(decodeExec.drafts.length).toBe(colo.drafts.length);
      decodeExec.drafts.forEach((d, i) => {
        expect(argmax(d)).toBe(argmax(colo.drafts[i]!));
        expect(relativeError(d, colo.drafts[i]!)).toBeLessThan(1e-5);
      });
    }
  }, 120_000);

  it('concurrent greedy requests equal plain greedy decoding; the pages carry the MTP layer', async () => {
    const lengths = [1, 2, 5, 9, 17, 30, 4, 12];
    const maxNew = [6, 12, 3, 9, 5, 8, 14, 4];
    const prompts = lengths.map((n, i) => prompt(n, i + 3));
    const plain = makeCore({ maxBatchedTokens: 64, maxRunningSeqs: 16 });
    prompts.forEach((p, i) =>
      plain.add({ id: `r${i}`, promptIds: p, params: greedy(maxNew[i]!, { ignoreEos: true }) }),
    );
    const want = (await drain(plain)).tokens;
    const before = prefill.status().pageBytes;
    const got = await Promise.all(
      prompts.map((p, i) =>
        collect(engine.generate({ promptIds: p, params: greedy(maxNew[i]!, { ignoreEos: true }) })),
      ),
    );
    expect(got.map((g) => g.tokens)).toEqual(prompts.map((_, i) => want.get(`r${i}`)));
    // 4 main layers + the MTP layer, (kv_lora_rank 64 + rope 16) f32 each, for every prompt token but the last
    expect(prefill.status().bytesPerToken).toBe(5 * (64 + 16) * 4);
    expect(prefill.status().pageBytes - before).toBe(lengths.reduce((a, n) => a + (n - 1) * 5 * (64 + 16) * 4, 0));
    // the router's stats (for /metrics) carry the decode workers' draft counts (refreshed here by hand)
    await router.register('decode', decodeUrl);
    expect(router.stats().speculative).toEqual(decode.core.stats().speculative);
    expect(router.stats().speculative.drafted[0]).toBeGreaterThan(0);
    expect(router.failedRequests).toBe(0);
  }, 120_000);

  it('the router refuses a decode worker that does not take the MTP layer', async () => {
    const plainDecode = new DecodeWorker(new ModelExecutor(model, model.newCache(64 * 4, { blockSize: 4 })), {
      maxModelLen: 128,
    });
    const url = await plainDecode.app.listen({ port: 0, host: '127.0.0.1' });
    try {
      await expect(router.register('decode', url)).rejects.toThrow(/must all use the same --mtp/);
    } finally {
      await plainDecode.app.close();
    }
  });
});
