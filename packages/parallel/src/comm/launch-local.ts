// Starts a local job: `nproc` worker threads of this process running one script, joined by the
// shared-memory transport. Each worker's output is prefixed with its rank; a worker that throws or
// exits early marks itself down so every other rank fails at once instead of hanging.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import {
  createLocalFabric,
  defaultChannelBytes,
  markRankDown,
  RANK_CLOSED,
  RANK_FAILED,
  type LocalFabric,
} from './local.js';
import { prefixLines } from './prefix.js';

export interface LocalLaunchOptions {
  nproc: number;
  /** The script every rank runs (.js/.mjs, or .ts where the `tsx` package is installed). */
  script: string | URL;
  /** Extra process.argv entries for the script. */
  args?: string[];
  env?: Record<string, string>;
  /** Bytes of each pair's shared-memory ring (a power of two). */
  channelBytes?: number;
  /** Bytes of each rank's staging piece for shared-memory all-reduce / all-to-all (a power of two);
   *  0 runs them over the rings instead. */
  pieceBytes?: number;
  /** Terminates every rank after this long (default: no limit). */
  timeoutMs?: number;
  /** Where rank-prefixed output goes (default: this process's stdout / stderr). */
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WritableStream;
}

export interface LocalRankResult {
  rank: number;
  exitCode: number;
  /** What the rank passed to reportResult(), if anything. */
  result?: unknown;
  error?: Error;
}

/** workerData key under which a local rank finds its fabric. */
export const LOCAL_WORKER_KEY = '__dsv3_local__';

export interface LocalWorkerData {
  rank: number;
  fabric: LocalFabric;
}

function workerSource(script: URL): { code: string; eval: boolean; execArgv: string[] } | { url: URL } {
  if (!/\.[cm]?ts$/.test(script.pathname)) return { url: script };
  let api: string;
  try {
    // The ESM entry of tsx's API (require.resolve would pick its CommonJS one).
    const pkgPath = createRequire(import.meta.url).resolve('tsx/package.json');
    const pkg = JSON.parse(readFileSync(pkgPath, 'utf8')) as {
      exports: Record<string, { import: { default: string } }>;
    };
    api = new URL(pkg.exports['./esm/api']!.import.default, pathToFileURL(pkgPath)).href;
  } catch {
    throw new Error(
      `launchLocal: ${script.pathname} is TypeScript; install the tsx package to run it, or pass the built .js file`,
    );
  }
  const code = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(script.href)}); })`;
  return { code, eval: true, execArgv: ['--conditions=@dsv3/source'] };
}

export async function launchLocal(opts: LocalLaunchOptions): Promise<LocalRankResult[]> {
  const { nproc } = opts;
  if (!Number.isInteger(nproc) || nproc < 1)
    throw new RangeError(`launchLocal: nproc must be a positive integer, got ${nproc}`);
  const script = typeof opts.script === 'string' ? pathToFileURL(opts.script) : opts.script;
  const fabric = createLocalFabric(nproc, opts.channelBytes ?? defaultChannelBytes(nproc), opts.pieceBytes);
  const src = workerSource(script);
  const out = opts.stdout ?? process.stdout;
  const err = opts.stderr ?? process.stderr;
  const workers: Worker[] = [];
  const results = await new Promise<LocalRankResult[]>((resolveAll) => {
    const res: LocalRankResult[] = [];
    let left = nproc;
    let timer: ReturnType<typeof setTimeout> | undefined;
    if (opts.timeoutMs) {
      timer = setTimeout(() => {
        for (const [r, w] of workers.entries()) {
          if (res[r]) continue;
          res[r] = {
            rank: r,
            exitCode: 124,
            error: new Error(`rank ${r} was still running after ${opts.timeoutMs} ms and was terminated`),
          };
          void w.terminate();
        }
      }, opts.timeoutMs);
    }
    for (let rank = 0; rank < nproc; rank++) {
      const workerData = { [LOCAL_WORKER_KEY]: { rank, fabric } satisfies LocalWorkerData };
      const common = {
        workerData,
        argv: opts.args ?? [],
        env: { ...process.env, ...opts.env },
        stdout: true,
        stderr: true,
      };
      const w =
        'url' in src
          ? new Worker(src.url, common)
          : new Worker(src.code, { ...common, eval: true, execArgv: src.execArgv });
      workers.push(w);
      prefixLines(w.stdout, out, `[rank ${rank}] `);
      prefixLines(w.stderr, err, `[rank ${rank}] `);
      let result: unknown;
      let error: Error | undefined;
      w.on('message', (m: unknown) => {
        if (m && typeof m === 'object' && 'dsv3Result' in m) result = (m as { dsv3Result: unknown }).dsv3Result;
      });
      w.on('error', (e) => {
        error = e;
        markRankDown(fabric, rank, RANK_FAILED, 1);
      });
      w.on('exit', (code) => {
        markRankDown(fabric, rank, code === 0 && !error ? RANK_CLOSED : RANK_FAILED, code || 1);
        res[rank] ??= { rank, exitCode: error && code === 0 ? 1 : code, result, ...(error ? { error } : {}) };
        if (--left === 0) {
          clearTimeout(timer);
          resolveAll(res);
        }
      });
    }
  });
  return results;
}
