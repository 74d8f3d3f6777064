// Disaggregated serving across network namespaces (two "machines" on a bridge, the router on the
// host): one prefill and one decode worker in each, so latent pages cross between machines. Needs
// root and iproute2; skipped with a notice otherwise. The namespaces are removed whatever happens.
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, startCluster, workerStatus, type Cluster } from './disagg-helpers.js';
import { drain, greedy, makeCore, prompt } from './helpers.js';

function canNetns(): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
  } catch {
    return 'iproute2 (ip) is not installed';
  }
  return null;
}
const why = canNetns();
if (why) console.warn(`disagg-netns: skipped (${why})`);

const tag = `d3${process.pid % 100000}`;
const subnet = `10.213.${process.pid % 250}`;
const ns = [`${tag}a`, `${tag}b`];
const ip = (...args: string[]): void => void execFileSync('ip', args, { stdio: 'pipe' });

function setUp(): void {
  tearDown(); // what a run killed before its own teardown left under this tag
  ip('link', 'add', `${tag}br`, 'type', 'bridge');
  ip('addr', 'add', `${subnet}.1/24`, 'dev', `${tag}br`);
  ip('link', 'set', `${tag}br`, 'up');
  ns.forEach((n, i) => {
    ip('netns', 'add', n);
    ip('link', 'add', `${tag}h${i}`, 'type', 'veth', 'peer', 'name', `${tag}n${i}`);
    ip('link', 'set', `${tag}n${i}`, 'netns', n);
    ip('link', 'set', `${tag}h${i}`, 'master', `${tag}br`);
    ip('link', 'set', `${tag}h${i}`, 'up');
    ip('-n', n, 'addr', 'add', `${subnet}.${i + 2}/24`, 'dev', `${tag}n${i}`);
    ip('-n', n, 'link', 'set', `${tag}n${i}`, 'up');
    ip('-n', n, 'link', 'set', 'lo', 'up');
  });
}

function tearDown(): void {
  for (const args of [['link', 'del', `${tag}br`], ...ns.map((n) => ['netns', 'del', n])]) {
    try {
      ip(...args);
    } catch {
      // already gone
    }
  }
}

describe.skipIf(why !== null)('disaggregated serving across network namespaces', () => {
  let c: Cluster | undefined;
  beforeAll(async () => {
    try {
      setUp();
      // workers 0,1 prefill and 2,3 decode: prefill 0 and decode 2 on machine a, the others on b
      const machine = (i: number): number => i % 2;
      c = await startCluster(2, 2, {
        host: `${subnet}.1`,
        prefix: (i) => ['ip', 'netns', 'exec', ns[machine(i)]!],
        hostOf: (i) => `${subnet}.${machine(i) + 2}`,
      });
    } catch (e) {
      await c?.close();
      tearDown();
      throw e;
    }
  }, 180_000);
  afterAll(async () => {
    await c?.close();
    tearDown();
  });

  it('concurrent greedy requests equal the colocated engine; pages cross machines', async () => {
    const lengths = [3, 14, 27, 9, 1, 20];
    const maxNew = [7, 4, 9, 5, 8, 6];
    const prompts = lengths.map((n, i) => prompt(n, i + 40));
    const core = makeCore({ maxBatchedTokens: 64 });
    prompts.forEach((p, i) => core.add({ id: `r${i}`, promptIds: p, params: greedy(maxNew[i]!, { ignoreEos: true }) }));
    const { tokens } = await drain(core);
    const got = await Promise.all(
      prompts.map((p, i) =>
        collect(c!.engine.generate({ promptIds: p, params: greedy(maxNew[i]!, { ignoreEos: true }) })),
      ),
    );
    expect(got.map((g) => g.tokens)).toEqual(prompts.map((_, i) => tokens.get(`r${i}`)));
    for (const w of c!.workers) {
      expect(w.url).toContain(subnet);
      expect((await workerStatus(w.url)).handled).toBeGreaterThan(0);
    }
  }, 120_000);
});
