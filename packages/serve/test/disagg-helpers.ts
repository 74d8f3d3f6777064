// Shared setup of the disaggregation tests: a router in this process, worker processes spawned over
// tiny-v3, and the colocated engine's greedy outputs to compare with.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { AsyncEngine, RouterCore, type GenerationChunk, type WorkerStatus } from '../src/index.js';
import { tinyTokenizer } from './tokenizer.js';

export interface Worker {
  role: 'prefill' | 'decode';
  url: string;
  proc: ChildProcess;
}

const script = join(import.meta.dirname, 'fixtures/disagg-worker.ts');

/** Spawns a worker process (optionally under a command prefix such as `ip netns exec ns`). */
export function spawnWorker(
  role: 'prefill' | 'decode',
  controlUrl: string,
  opts: { host?: string; prefix?: string[] } = {},
): Promise<Worker> {
  const args = [
    process.execPath,
    '--import',
    'tsx',
    '--conditions=@dsv3/source',
    script,
    role,
    controlUrl,
    opts.host ?? '127.0.0.1',
  ];
  const [cmd, ...rest] = [...(opts.prefix ?? []), ...args];
  const proc = spawn(cmd!, rest, { stdio: ['ignore', 'pipe', 'inherit'], cwd: join(import.meta.dirname, '..') });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${role} worker did not start within 60 s: ${out}`)), 60_000);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /READY (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ role, url: m[1]!, proc });
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${role} worker exited with ${code} before it was ready: ${out}`));
    });
  });
}

export function kill(w: Worker): Promise<void> {
  return new Promise((resolve) => {
    if (w.proc.exitCode !== null || w.proc.signalCode !== null) return resolve();
    w.proc.once('exit', () => resolve());
    w.proc.kill('SIGKILL');
  });
}

export interface Cluster {
  router: RouterCore;
  engine: AsyncEngine;
  controlUrl: string;
  workers: Worker[];
  close(): Promise<void>;
}

/** A router listening on `host` with `prefill` + `decode` worker processes registered (worker i on hostOf(i), under prefix(i)). */
export async function startCluster(
  prefill: number,
  decode: number,
  opts: { host?: string; workerHost?: string; prefix?: (i: number) => string[]; hostOf?: (i: number) => string } = {},
): Promise<Cluster> {
  const router = new RouterCore({ healthIntervalMs: 500, healthTimeoutMs: 10_000, maxMissedPolls: 3 });
  const controlUrl = await router.control.listen({ port: 0, host: opts.host ?? '127.0.0.1' });
  const roles = [...Array<'prefill'>(prefill).fill('prefill'), ...Array<'decode'>(decode).fill('decode')];
  const workers: Worker[] = [];
  try {
    for (const [i, role] of roles.entries())
      workers.push(
        await spawnWorker(role, controlUrl, {
          host: opts.hostOf?.(i) ?? opts.workerHost ?? '127.0.0.1',
          ...(opts.prefix && { prefix: opts.prefix(i) }),
        }),
      );
    await router.waitForWorkers(prefill, decode, 60_000);
  } catch (e) {
    await Promise.all(workers.map(kill));
    await router.close();
    throw e;
  }
  const engine = new AsyncEngine(router, tinyTokenizer());
  return {
    router,
    engine,
    controlUrl,
    workers,
    async close() {
      await Promise.all(workers.map(kill));
      await router.close();
    },
  };
}

/** Collects a stream's token ids; rejects with the stream's error. */
export async function collect(
  stream: AsyncIterable<GenerationChunk>,
): Promise<{ tokens: number[]; finish: string | null }> {
  const tokens: number[] = [];
  let finish: string | null = null;
  for await (const c of stream) {
    tokens.push(...c.tokenIds);
    finish = c.finishReason;
  }
  return { tokens, finish };
}

export async function workerStatus(url: string): Promise<WorkerStatus> {
  return (await (await fetch(`${url}/status`)).json()) as never;
}

/** Polls until `pred` holds (or throws after timeoutMs). */
export async function until(
  pred: () => Promise<boolean> | boolean,
  timeoutMs = 60_000,
  what = 'condition',
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
