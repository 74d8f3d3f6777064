// The engine's sampling where the logits are (CPU backend here, WebGPU in webgpu.test.ts): draws and
// speculative verification follow the request's distribution, seeded requests reproduce and do not
// depend on their batch, requests the device ops do not cover (bias, penalties, min-p) are sampled on
// their host rows in the same step, and the vocabulary limit holds.
import { describe, expect, it } from 'vitest';
import { tensor } from '@dsv3/core';
import { defaultSamplingParams, EngineCore, RequestSampler, type SamplingParams } from '../src/index.js';
import { pickTokens, StepPicks } from '../src/index.js';
import { drain, greedy, makeCore, prompt } from './helpers.js';

const params = (o: Partial<SamplingParams>): SamplingParams => ({ ...defaultSamplingParams, ...o });
const row = [1.0, 2.0, 0.5, 1.5, -1.0];
const softmax = (x: readonly number[], t = 1): number[] => {
  const m = Math.max(...x);
  const e = x.map((v) => Math.exp((v - m) / t));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
};
/** The same row n times as logits [n * rowsEach, V]. */
const rows = (n: number, each = 1): ReturnType<typeof tensor> =>
  tensor(Float32Array.from(Array.from({ length: n * each }, () => row).flat()), { shape: [n * each, row.length] });

describe('pickTokens (one step of requests)', () => {
  it('draws of many seeded requests follow softmax(x / T); one-hot drafts are accepted with p(draft)', async () => {
    const N = 6000;
    const freq = (tokens: number[]): number[] =>
      row.map((_, i) => tokens.filter((t) => t === i).length / tokens.length);
    const samplers = Array.from({ length: N }, (_, i) => new RequestSampler(params({ temperature: 0.7, seed: i }), []));
    const drawn = await pickTokens(
      rows(N),
      samplers.map((sampler) => ({ sampler, draft: [] })),
      row.length,
    );
    freq(drawn.map((p) => p!.emitted[0]!.token)).forEach((f, i) => expect(f).toBeCloseTo(softmax(row, 0.7)[i]!, 1));
    // verification of draft 3 against p: accepted with p(3); the first emitted token is distributed as p
    const verifiers = Array.from({ length: N }, (_, i) => new RequestSampler(params({ seed: 10_000 + i }), []));
    const verified = await pickTokens(
      rows(N, 2),
      verifiers.map((sampler) => ({ sampler, draft: [3] })),
      row.length,
    );
    const p = softmax(row);
    const accepted = verified.filter((v) => v!.accepted === 1).length / N;
    expect(accepted).toBeCloseTo(p[3]!, 1);
    freq(verified.map((v) => v!.emitted[0]!.token)).forEach((f, i) => expect(f).toBeCloseTo(p[i]!, 1));
    verified.forEach((v) => expect(v!.emitted).toHaveLength(v!.accepted + 1));
  });

  it('greedy drafts are accepted while they equal the argmax; host-sampled requests share the step', async () => {
    const g = (): RequestSampler => new RequestSampler(params({ temperature: 0 }), []);
    const biased = new RequestSampler(params({ temperature: 0, logitBias: new Map([[4, 10]]) }), []);
    const penalised = new RequestSampler(params({ temperature: 0, presencePenalty: 1 }), []);
    penalised.observe(1);
    const picked = await pickTokens(
      rows(8),
      [
        { sampler: g(), draft: [1] }, // rows 0-1: accepted, bonus argmax
        { sampler: g(), draft: [3] }, // rows 2-3: rejected at once
        null, // row 4: a prefill chunk that does not sample
        { sampler: biased, draft: [] }, // row 5
        { sampler: penalised, draft: [] }, // row 6: 2 - 1 < 1.5
        { sampler: g(), draft: [] }, // row 7
      ],
      row.length,
    );
    expect(picked.map((p) => p && [p.accepted, p.emitted.map((e) => e.token)])).toEqual([
      [1, [1, 1]],
      [0, [1]],
      null,
      [0, [4]],
      [0, [3]],
      [0, [1]],
    ]);
  });

  it('the tokens each request emits, still on the device, are the ones read back (MTP inputs)', async () => {
    const N = 40;
    const requests = Array.from({ length: N }, (_, i) => ({
      sampler: new RequestSampler(params({ temperature: i % 4 === 0 ? 0 : 1.2, seed: 77 + i }), []),
      draft: i % 3 === 0 ? [] : [i % row.length],
    }));
    const logits = rows(requests.reduce((n, r) => n + 1 + r.draft.length, 0));
    const picks = new StepPicks(logits, requests, row.length);
    const entries = requests.flatMap((r, i) => [
      1000 + i,
      ...Array.from({ length: 1 + r.draft.length }, (_, position) => ({ request: i, position })),
    ]);
    const onDevice = picks.tokensOnDevice(entries);
    const { picked, extra } = await picks.read(onDevice);
    let k = 0;
    requests.forEach((r, i) => {
      expect(extra![k++]).toBe(1000 + i);
      const emitted = picked[i]!.emitted.map((e) => e.token);
      const got = Array.from(extra!.subarray(k, k + 1 + r.draft.length));
      k += 1 + r.draft.length;
      expect(got.slice(0, emitted.length)).toEqual(emitted);
    });
    expect(
      picked.some((p) => p!.accepted === 1) && picked.some((p, i) => requests[i]!.draft.length && !p!.accepted),
    ).toBe(true);
  });

  it('ids stay below the vocabulary limit; logprobs are of the raw limited row', async () => {
    const s = new RequestSampler(params({ temperature: 0, logprobs: 1 }), []);
    const [p] = await pickTokens(rows(1), [{ sampler: s, draft: [] }], 1);
    expect(p!.emitted[0]).toEqual({ token: 0, logprob: { token: 0, logprob: 0, top: [{ token: 0, logprob: 0 }] } });
    const t = new RequestSampler(params({ temperature: 1, topK: 0, seed: 3 }), []);
    const draws = await pickTokens(
      rows(50),
      Array.from({ length: 50 }, () => ({ sampler: t, draft: [] })),
      2,
    );
    expect(new Set(draws.map((d) => d!.emitted[0]!.token))).toEqual(new Set([0, 1]));
  });
});

describe('seeded requests in the engine (tiny-v3)', () => {
  const sampled = (seed: number, extra: Partial<SamplingParams> = {}): SamplingParams =>
    params({ temperature: 0.9, topK: 50, topP: 0.95, seed, maxTokens: 12, ignoreEos: true, ...extra });

  it('reproduce, and do not depend on the requests batched with them', async () => {
    const alone = makeCore();
    alone.add({ id: 'a', promptIds: prompt(7, 1), params: sampled(42) });
    const want = (await drain(alone)).tokens.get('a')!;

    const batched = makeCore({ maxBatchedTokens: 8 });
    batched.add({ id: 'x', promptIds: prompt(13, 2), params: sampled(1) });
    batched.add({ id: 'a', promptIds: prompt(7, 1), params: sampled(42) });
    batched.add({ id: 'g', promptIds: prompt(3, 3), params: greedy(9) });
    batched.add({ id: 'p', promptIds: prompt(5, 4), params: sampled(9, { presencePenalty: 0.5 }) });
    const got = (await drain(batched)).tokens;
    expect(got.get('a')).toEqual(want);
    expect(got.get('x')).not.toEqual(want);

    const other = makeCore();
    other.add({ id: 'a', promptIds: prompt(7, 1), params: sampled(43) });
    expect((await drain(other)).tokens.get('a')).not.toEqual(want);
  }, 120_000);

  it('with MTP drafts verified on the device, reproduce across batches', async () => {
    const run = async (others: boolean): Promise<number[]> => {
      const core = makeCore({ speculativeTokens: 1, maxBatchedTokens: 32, draftWithPicks: true });
      core.add({ id: 'a', promptIds: prompt(6, 5), params: sampled(7, { maxTokens: 10 }) });
      if (others) core.add({ id: 'b', promptIds: prompt(9, 6), params: sampled(8, { maxTokens: 10 }) });
      const { tokens } = await drain(core);
      expect(core.stats().speculative.drafted[0]).toBeGreaterThan(0);
      return tokens.get('a')!;
    };
    const want = await run(false);
    expect(want).toHaveLength(10);
    expect(await run(true)).toEqual(want);
  }, 120_000);

  it('MTP drafts enqueued with the picks equal those drafted after reading them', async () => {
    const drafts = async (withPicks: boolean, extra: Partial<SamplingParams> = {}): Promise<number[][]> => {
      const core = makeCore({ speculativeTokens: 1, maxBatchedTokens: 8, draftWithPicks: withPicks });
      core.add({ id: 'a', promptIds: prompt(11, 9), params: greedy(12, { ignoreEos: true, ...extra }) });
      core.add({ id: 'b', promptIds: prompt(4, 10), params: greedy(9, { ignoreEos: true, ...extra }) });
      const seen: number[][] = [];
      while (core.hasWork) {
        await core.step();
        seen.push(core.scheduler.running.flatMap((s) => s.draft));
      }
      return seen;
    };
    const afterRead = await drafts(false);
    expect(afterRead.flat().length).toBeGreaterThan(10);
    expect(await drafts(true)).toEqual(afterRead);
    // a zero logit bias changes no choice but sends the requests to the host sampler, drafted after the read
    expect(await drafts(true, { logitBias: new Map([[3, 0]]) })).toEqual(afterRead);
  }, 120_000);

  it('an engine core with a vocabulary limit never emits ids past it', async () => {
    const core = new EngineCore(makeCore().executor, { vocabLimit: 40 });
    core.add({ id: 's', promptIds: prompt(4, 7), params: sampled(5, { topK: 0, topP: 1, temperature: 3 }) });
    core.add({ id: 'g', promptIds: prompt(4, 8), params: greedy(6, { ignoreEos: true }) });
    const { tokens } = await drain(core);
    for (const t of [...tokens.values()].flat()) expect(t).toBeLessThan(40);
  }, 120_000);
});
