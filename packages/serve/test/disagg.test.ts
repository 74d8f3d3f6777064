// Disaggregated serving (1 router in this process, 2 prefill and 2 decode worker processes) against
// the colocated engine: same greedy outputs for concurrent requests; a prefill worker killed
// mid-prompt is retried elsewhere, a decode worker killed mid-generation fails its requests with a
// clear error; the router keeps serving and no worker leaks cache blocks.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RequestFailedError } from '../src/index.js';
import { collect, kill, spawnWorker, startCluster, until, workerStatus, type Cluster } from './disagg-helpers.js';
import { drain, greedy, makeCore, prompt } from './helpers.js';

const lengths = [1, 2, 5, 9, 17, 30, 4, 40, 12, 23];
const maxNew = [6, 12, 3, 9, 5, 8, 14, 4, 10, 7];
const prompts = lengths.map((n, i) => prompt(n, i + 3));

async function colocated(ps: number[][], ns: number[]): Promise<number[][]> {
  const core = makeCore({ maxBatchedTokens: 64, maxRunningSeqs: 16 });
  ps.forEach((p, i) => core.add({ id: `r${i}`, promptIds: p, params: greedy(ns[i]!, { ignoreEos: true }) }));
  const { tokens } = await drain(core);
  return ps.map((_, i) => tokens.get(`r${i}`)!);
}

async function allFree(c: Cluster): Promise<boolean> {
  for (const w of c.workers) {
    if (w.proc.exitCode !== null || w.proc.signalCode !== null) continue;
    const s = await workerStatus(w.url);
    if (s.freeBlocks !== s.totalBlocks || s.running || s.waiting) return false;
  }
  return true;
}

describe('disaggregated serving (processes)', () => {
  let c: Cluster;
  beforeAll(async () => {
    c = await startCluster(2, 2);
  }, 120_000);
  afterAll(async () => {
    await c?.close();
  });

  it('concurrent greedy requests equal the colocated engine; both workers of each role used; blocks return', async () => {
    const want = await colocated(prompts, maxNew);
    const got = await Promise.all(
      prompts.map((p, i) =>
        collect(c.engine.generate({ promptIds: p, params: greedy(maxNew[i]!, { ignoreEos: true }) })),
      ),
    );
    expect(got.map((g) => g.tokens)).toEqual(want);
    expect(got.every((g) => g.finish === 'length')).toBe(true);
    await until(() => allFree(c), 10_000, 'workers to free their blocks');
    const st = await Promise.all(c.workers.map((w) => workerStatus(w.url)));
    for (const s of st) expect(s.handled).toBeGreaterThan(0);
    // every prompt token but the last crossed as latents: (d_c + d_R) floats per main layer
    const bytes = (n: number): number => (n - 1) * st[0]!.bytesPerToken;
    const sent = st.filter((s) => s.role === 'prefill').reduce((a, s) => a + s.pageBytes, 0);
    expect(sent).toBe(lengths.reduce((a, n) => a + bytes(n), 0));
    expect(st[0]!.bytesPerToken).toBe(4 * (64 + 16) * 4);
    expect(st.filter((s) => s.role === 'decode').reduce((a, s) => a + s.pageBytes, 0)).toBe(sent);
    expect(c.router.failedRequests).toBe(0);
  }, 120_000);

  it('a prefill worker killed mid-prompt: the request is retried on the other one and completes exactly', async () => {
    const long = prompt(100, 77);
    const want = (await colocated([long], [8]))[0];
    const stream = collect(c.engine.generate({ promptIds: long, params: greedy(8, { ignoreEos: true }) }));
    // the prompt takes ~7 steps of 16 tokens: kill whichever prefill worker holds it
    let victim: (typeof c.workers)[number] | undefined;
    await until(
      async () => {
        for (const w of c.workers.filter((x) => x.role === 'prefill'))
          if ((await workerStatus(w.url)).running > 0) victim = w;
        return victim !== undefined;
      },
      30_000,
      'a prefill worker to start the prompt',
    );
    await kill(victim!);
    const got = await stream;
    expect(got.tokens).toEqual(want);
    expect(c.router.prefillRetries).toBeGreaterThanOrEqual(1);
    // the router keeps serving, without the dead worker
    await until(() => c.router.count('prefill') === 1, 10_000, 'the router to drop the dead worker');
    const after = await collect(
      c.engine.generate({ promptIds: prompts[3]!, params: greedy(maxNew[3]!, { ignoreEos: true }) }),
    );
    expect(after.tokens).toEqual((await colocated([prompts[3]!], [maxNew[3]!]))[0]);
    await until(() => allFree(c), 10_000, 'workers to free their blocks');
    // a replacement registers and is used
    c.workers.push(await spawnWorker('prefill', c.controlUrl));
    await c.router.waitForWorkers(2, 2, 30_000);
  }, 120_000);

  it('a decode worker killed mid-generation: its request fails with a clear error, others go on', async () => {
    const p = prompt(10, 91);
    const stream = c.engine.generate({ promptIds: p, params: greedy(100, { ignoreEos: true }) });
    const first = await stream.next();
    expect(first.done).toBe(false);
    let victim: (typeof c.workers)[number] | undefined;
    for (const w of c.workers.filter((x) => x.role === 'decode'))
      if ((await workerStatus(w.url)).running > 0) victim = w;
    expect(victim).toBeDefined();
    await kill(victim!);
    const err = await (async () => {
      try {
        for await (const _ of stream) void _;
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(err).toBeInstanceOf(RequestFailedError);
    expect(String((err as Error).message)).toMatch(/decode worker .* lost/);
    await until(() => c.router.count('decode') === 1, 10_000, 'the router to drop the dead decode worker');
    const got = await Promise.all(
      prompts
        .slice(0, 4)
        .map((q, i) => collect(c.engine.generate({ promptIds: q, params: greedy(maxNew[i]!, { ignoreEos: true }) }))),
    );
    expect(got.map((g) => g.tokens)).toEqual(await colocated(prompts.slice(0, 4), maxNew.slice(0, 4)));
    await until(() => allFree(c), 10_000, 'workers to free their blocks');
  }, 120_000);
});
