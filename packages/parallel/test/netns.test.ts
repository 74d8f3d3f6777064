// The tcp transport across three "machines": network namespaces joined by veth pairs (a full mesh,
// one /32 node address per namespace), one dsv3-run per namespace. Needs root and iproute2; the
// namespaces are always removed, even when a test fails.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, pkgRoot, rankScript } from './helpers/run-job.js';

const tag = `d3${process.pid % 100000}`;
const ns = [0, 1, 2].map((i) => `${tag}n${i}`);
const addr = (i: number) => `10.231.${(process.pid >> 8) & 255}.${i + 1}`;

function canUseNetns(): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  if (spawnSync('ip', ['-V'], { stdio: 'ignore' }).status !== 0) return 'iproute2 (ip) not installed';
  const probe = `${tag}probe`;
  const ok = spawnSync('ip', ['netns', 'add', probe], { stdio: 'ignore' }).status === 0;
  spawnSync('ip', ['netns', 'del', probe], { stdio: 'ignore' });
  return ok ? null : 'cannot create network namespaces here';
}

const why = canUseNetns();
if (why) console.warn(`[dsv3] skipping the network-namespace tests: ${why}`);

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: 'pipe' });

function killNamespace(name: string): void {
  const pids = spawnSync('ip', ['netns', 'pids', name], { encoding: 'utf8' }).stdout.split(/\s+/).filter(Boolean);
  for (const pid of pids) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function teardown(): void {
  for (const n of ns) {
    killNamespace(n);
    spawnSync('ip', ['netns', 'del', n], { stdio: 'ignore' });
  }
}

function setup(): void {
  teardown();
  for (const [i, n] of ns.entries()) {
    ip('netns', 'add', n);
    ip('-n', n, 'link', 'set', 'lo', 'up');
    ip('-n', n, 'addr', 'add', `${addr(i)}/32`, 'dev', 'lo');
  }
  for (let i = 0; i < 3; i++)
    for (let j = i + 1; j < 3; j++) {
      ip('-n', ns[i]!, 'link', 'add', `v${i}${j}`, 'type', 'veth', 'peer', 'name', `v${j}${i}`, 'netns', ns[j]!);
      for (const [a, b] of [
        [i, j],
        [j, i],
      ] as const) {
        ip('-n', ns[a]!, 'link', 'set', `v${a}${b}`, 'up');
        ip('-n', ns[a]!, 'route', 'add', `${addr(b)}/32`, 'dev', `v${a}${b}`, 'src', addr(a));
      }
    }
}

interface Node {
  child: ChildProcess;
  output: string;
  done: Promise<number | null>;
}

function startNode(i: number, port: number, script: string, args: string[], env: Record<string, string> = {}): Node {
  const child = spawn(
    'ip',
    [
      'netns',
      'exec',
      ns[i]!,
      process.execPath,
      '--import',
      'tsx',
      '--conditions=@dsv3/source',
      cli,
      '--nproc',
      '1',
      '--nnodes',
      '3',
      '--node-rank',
      String(i),
      '--master',
      `${addr(0)}:${port}`,
      script,
      ...args,
    ],
    { cwd: pkgRoot, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const node: Node = { child, output: '', done: Promise.resolve(null) };
  child.stdout!.on('data', (d) => (node.output += d));
  child.stderr!.on('data', (d) => (node.output += d));
  node.done = new Promise((r) => child.on('close', (code) => r(code)));
  return node;
}

const results = (n: Node) =>
  [...n.output.matchAll(/DSV3_RESULT (.*)$/gm)].map((m) => JSON.parse(m[1]!) as Record<string, unknown>);

async function withDeadline<T>(p: Promise<T>, ms: number, nodes: Node[]): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`the job did not finish within ${ms} ms:\n${nodes.map((n) => n.output).join('\n')}`)),
      ms,
    );
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

describe.skipIf(why !== null)('tcp transport across three network namespaces', () => {
  beforeAll(setup);
  afterAll(teardown);

  it('every collective matches the sequential reference, one rank per namespace', { timeout: 240_000 }, async () => {
    const nodes = [0, 1, 2].map((i) =>
      startNode(i, 29400 + (process.pid % 500), rankScript('check-collectives.ts'), []),
    );
    try {
      const codes = await withDeadline(Promise.all(nodes.map((n) => n.done)), 220_000, nodes);
      const all = nodes.flatMap(results);
      expect(codes, nodes.map((n) => n.output).join('\n')).toEqual([0, 0, 0]);
      expect(all.map((r) => r.rank).sort()).toEqual([0, 1, 2]);
      for (const r of all) {
        expect(r).toMatchObject({ size: 3, backend: 'tcp', failures: [] });
        // Another network namespace is another host to the same-host path: every peer is read over TCP.
        expect(r.links).toEqual([0, 1, 2].map((i) => (i === r.rank ? null : 'tcp')));
      }
    } finally {
      for (const n of ns) killNamespace(n);
    }
  });

  it("killing one namespace's rank mid-collective gives the others a clear error within the timeout", {
    timeout: 240_000,
  }, async () => {
    const env = { FAULT_VICTIM: '2', FAULT_TIMEOUT_MS: '10000' };
    const nodes = [0, 1, 2].map((i) =>
      startNode(i, 29900 + (process.pid % 500), rankScript('fault.ts'), ['killed'], env),
    );
    try {
      await withDeadline(
        (async () => {
          while (!nodes.every((n) => n.output.includes('DSV3_READY'))) await new Promise((r) => setTimeout(r, 100));
        })(),
        120_000,
        nodes,
      );
      await new Promise((r) => setTimeout(r, 500)); // mid-collective: the ranks are in their all-reduce loop
      const killedAt = Date.now();
      killNamespace(ns[2]!);
      await withDeadline(Promise.all(nodes.slice(0, 2).map((n) => n.done)), 60_000, nodes);
      for (const n of nodes.slice(0, 2)) {
        const [r] = results(n);
        expect(r, n.output).toBeDefined();
        expect(r!.error as string).toMatch(
          /^rank 2 closed its connection \(its process exited or was killed\) during ALLREDUCE #\d+ \(group 0/,
        );
      }
      expect(Date.now() - killedAt).toBeLessThan(10_000 + 5_000);
    } finally {
      for (const n of ns) killNamespace(n);
    }
  });

  it('a namespace cut off the network (no FIN, no RST) makes the others time out naming the operation', {
    timeout: 240_000,
  }, async () => {
    const env = { FAULT_VICTIM: '2', FAULT_TIMEOUT_MS: '5000' };
    const nodes = [0, 1, 2].map((i) =>
      startNode(i, 30400 + (process.pid % 500), rankScript('fault.ts'), ['killed'], env),
    );
    try {
      await withDeadline(
        (async () => {
          while (!nodes.every((n) => n.output.includes('DSV3_READY'))) await new Promise((r) => setTimeout(r, 100));
        })(),
        120_000,
        nodes,
      );
      const cutAt = Date.now();
      ip('-n', ns[2]!, 'link', 'del', 'v20');
      ip('-n', ns[2]!, 'link', 'del', 'v21');
      await withDeadline(Promise.all(nodes.slice(0, 2).map((n) => n.done)), 60_000, nodes);
      for (const n of nodes.slice(0, 2)) {
        const [r] = results(n);
        expect(r, n.output).toBeDefined();
        expect(r!.error as string).toMatch(
          // A rank may name a peer that is itself stuck on rank 2 (a ring predecessor, or a direct-exchange peer
          // whose send to rank 2 blocked), and the direct exchange waits on several peers at once.
          /ALLREDUCE #\d+ \(group 0, the world; this is rank \d\) timed out after 5000 ms: still waiting for ranks? \d(?:, \d)*$|rank \d aborted \(ALLREDUCE #\d+ \(group 0\) timed out there\) during ALLREDUCE #\d+/,
        );
      }
      expect(Date.now() - cutAt).toBeLessThan(5_000 + 5_000);
    } finally {
      for (const n of ns) killNamespace(n);
    }
  });
});
