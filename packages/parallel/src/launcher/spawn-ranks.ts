// Starts this node's ranks as child processes with the variables torchrun sets (RANK, WORLD_SIZE,
// LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT), prefixes their output with
// the rank, and stops them all when one fails or the launcher is signalled: no rank outlives the job.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { prefixLines } from '../comm/prefix.js';

export interface SpawnRanksOptions {
  nproc: number;
  nnodes: number;
  nodeRank: number;
  masterAddr: string;
  masterPort: number;
  script: string;
  args: string[];
  transport?: string;
  env?: Record<string, string>;
  /** After the first failure, how long ranks get to exit on SIGTERM before SIGKILL. */
  graceMs?: number;
  /** After a rank fails, how long the others get to notice it and exit with their own error before SIGTERM (default 1000). */
  failureDrainMs?: number;
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WritableStream;
}

export interface JobResult {
  /** 0 when every rank exited 0; otherwise the first failing rank's code. */
  exitCode: number;
  /** The first rank that failed, if any. */
  failedRank?: number;
  codes: (number | null)[];
}

/** How to run a script: node scripts with this Node (TypeScript through tsx), anything else directly. */
export function commandFor(script: string): { cmd: string; pre: string[] } {
  if (/\.[cm]?js$/.test(script)) return { cmd: process.execPath, pre: [] };
  if (/\.[cm]?ts$/.test(script)) {
    let loader: string;
    try {
      const req = createRequire(import.meta.url);
      const pkgPath = req.resolve('tsx/package.json');
      const pkg = JSON.parse(readFileSync(pkgPath, 'utf8')) as { exports: Record<string, string> };
      loader = new URL(pkg.exports['./esm']!, `file://${pkgPath}`).href;
    } catch {
      throw new Error(
        `dsv3-run: ${script} is TypeScript; install the tsx package to run it, or pass the built .js file`,
      );
    }
    return { cmd: process.execPath, pre: ['--import', loader, '--conditions=@dsv3/source'] };
  }
  return { cmd: script, pre: [] };
}

export function spawnRanks(o: SpawnRanksOptions): Promise<JobResult> {
  const out = o.stdout ?? process.stdout;
  const err = o.stderr ?? process.stderr;
  const world = o.nproc * o.nnodes;
  const { cmd, pre } = commandFor(o.script);
  const children: ChildProcess[] = [];
  const codes: (number | null)[] = new Array<number | null>(o.nproc).fill(null);
  let failed: { rank: number; code: number } | null = null;
  let left = o.nproc;
  let killTimer: ReturnType<typeof setTimeout> | undefined;
  let drainTimer: ReturnType<typeof setTimeout> | undefined;

  const stopAll = (signal: NodeJS.Signals) => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill(signal);
    if (!killTimer)
      killTimer = setTimeout(() => {
        for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      }, o.graceMs ?? 5000);
  };
  const onSignal = (sig: NodeJS.Signals) => {
    err.write(`[dsv3-run] ${sig}: stopping every rank\n`);
    failed ??= { rank: -1, code: 128 + (sig === 'SIGINT' ? 2 : 15) };
    stopAll(sig);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  return new Promise((resolve) => {
    for (let local = 0; local < o.nproc; local++) {
      const rank = o.nodeRank * o.nproc + local;
      const env = {
        ...process.env,
        ...o.env,
        RANK: String(rank),
        WORLD_SIZE: String(world),
        LOCAL_RANK: String(local),
        LOCAL_WORLD_SIZE: String(o.nproc),
        GROUP_RANK: String(o.nodeRank),
        NODE_RANK: String(o.nodeRank),
        MASTER_ADDR: o.masterAddr,
        MASTER_PORT: String(o.masterPort),
        DSV3_RUN: '1',
        DSV3_LAUNCHER_PID: String(process.pid),
        ...(o.transport ? { DSV3_TRANSPORT: o.transport } : {}),
      };
      const child = spawn(cmd, [...pre, o.script, ...o.args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      prefixLines(child.stdout!, out, `[rank ${rank}] `);
      prefixLines(child.stderr!, err, `[rank ${rank}] `);
      child.on('error', (e) => err.write(`[dsv3-run] rank ${rank} could not start: ${e.message}\n`));
      child.on('close', (code, signal) => {
        const c = code ?? (signal ? 128 + (signal === 'SIGKILL' ? 9 : signal === 'SIGTERM' ? 15 : 1) : 1);
        codes[local] = c;
        if (c !== 0 && !failed) {
          failed = { rank, code: c };
          err.write(
            `[dsv3-run] rank ${rank} exited with ${signal ? `signal ${signal}` : `code ${c}`}; stopping the other ranks\n`,
          );
          // The others usually fail within milliseconds naming the lost rank (a clearer message than a
          // signal); a loaded machine may need longer, so they get a moment before SIGTERM.
          drainTimer = setTimeout(() => stopAll('SIGTERM'), o.failureDrainMs ?? 1000);
        }
        if (--left === 0) {
          clearTimeout(killTimer);
          clearTimeout(drainTimer);
          process.off('SIGINT', onSignal);
          process.off('SIGTERM', onSignal);
          const f = failed as { rank: number; code: number } | null;
          resolve({ exitCode: f ? f.code : 0, ...(f && f.rank >= 0 ? { failedRank: f.rank } : {}), codes });
        }
      });
    }
  });
}
