// dsv3-serve against llama.cpp's own llama-server on the same checkpoint (issue 12's serving
// comparison): both servers run side by side (dsv3-serve on the model directory, llama-server on its
// GGUF conversion, continuous batching with PARALLEL slots), then dsv3-bench-serve's load (streaming
// /v1/completions, token-id prompts, ignore_eos, greedy) runs against each at every concurrency, the
// two interleaved, ROUNDS times; the best round of each is kept. Prints throughput, TTFT and TPOT of
// both and their ratios, then one JSON line. Both servers are killed on exit, error or Ctrl-C.
// env: MODEL_DIR (/work/ckpt/v3-mini), GGUF (/work/peer-llamacpp/v3-mini-f32.gguf), LLAMA_SERVER
// (/work/peer-llamacpp/llama.cpp/build-server/bin/llama-server), THREADS (2), PARALLEL (16),
// CONCURRENCY (1,4,16), INPUT (64), OUTPUT (16), REQUESTS_PER_CLIENT (2), ROUNDS (1), TASKSET (a CPU
// list: run both servers under `taskset -c LIST`), READY_TIMEOUT_S (600)
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { basename, join } from 'node:path';
import { createInterface } from 'node:readline';
import { formatTable, runBenchmark, type BenchResult } from '../src/bench-serve.js';

const modelDir = process.env.MODEL_DIR ?? '/work/ckpt/v3-mini';
const gguf = process.env.GGUF ?? `/work/peer-llamacpp/${basename(modelDir)}-f32.gguf`;
const llamaServer = process.env.LLAMA_SERVER ?? '/work/peer-llamacpp/llama.cpp/build-server/bin/llama-server';
const threads = Number(process.env.THREADS ?? 2);
const parallel = Number(process.env.PARALLEL ?? 16);
const concurrency = (process.env.CONCURRENCY ?? '1,4,16').split(',').map(Number);
const inputLen = Number(process.env.INPUT ?? 64);
const outputLen = Number(process.env.OUTPUT ?? 16);
const perClient = Number(process.env.REQUESTS_PER_CLIENT ?? 2);
const rounds = Number(process.env.ROUNDS ?? 1);
const taskset = process.env.TASKSET;
const readyTimeoutMs = Number(process.env.READY_TIMEOUT_S ?? 600) * 1000;
const name = basename(modelDir);

const children: ChildProcess[] = [];
function killAll(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}
process.on('exit', killAll);
for (const s of ['SIGINT', 'SIGTERM'] as const)
  process.on(s, () => {
    killAll();
    process.exit(130);
  });

function fail(message: string): never {
  process.stderr.write(`vs-llama-server: ${message}\n`);
  process.exit(1);
}

/** Spawns a server process (under taskset when asked); its output goes to our stderr. */
function launch(cmd: string, args: string[], what: string): ChildProcess {
  const [file, argv] = taskset ? ['taskset', ['-c', taskset, cmd, ...args]] : [cmd, args];
  const p = spawn(file, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(p);
  p.stderr!.on('data', (d: Buffer) => {
    if (process.env.VERBOSE) process.stderr.write(`[${what}] ${d.toString()}`);
  });
  return p;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Polls url/health until it answers 200; fails if the process exits first or time runs out. */
async function waitHealthy(url: string, p: ChildProcess, what: string): Promise<void> {
  const until = Date.now() + readyTimeoutMs;
  for (;;) {
    if (p.exitCode !== null || p.signalCode !== null)
      fail(`${what} exited (${p.exitCode ?? p.signalCode}) before it was ready; rerun with VERBOSE=1 to see its log`);
    try {
      const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(5000) });
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > until) fail(`${what} was not healthy after ${readyTimeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function startDsv3(): Promise<string> {
  const cli = join(import.meta.dirname, '../src/cli.ts');
  const args = ['--import', 'tsx', '--conditions=@dsv3/source', cli, '--model', modelDir, '--port', '0'];
  args.push('--max-num-seqs', String(parallel), '--kv-cache-tokens', String(parallel * (inputLen + outputLen + 32)));
  const p = launch(process.execPath, args, 'dsv3-serve');
  const url = await new Promise<string>((resolve) => {
    createInterface({ input: p.stdout! }).on('line', (l) => {
      const m = /ready: .* on (http:\/\/\S+)/.exec(l);
      if (m) resolve(m[1]!);
    });
    p.once('exit', (code, signal) =>
      fail(`dsv3-serve exited (${code ?? signal}) before it was ready; rerun with VERBOSE=1 to see its log`),
    );
  });
  await waitHealthy(url, p, 'dsv3-serve');
  return url;
}

async function startLlama(): Promise<string> {
  if (!existsSync(llamaServer))
    fail(
      `llama-server not found at ${llamaServer}: build llama.cpp's server target (cmake --build ... --target llama-server) or set LLAMA_SERVER`,
    );
  if (!existsSync(gguf))
    fail(`${gguf} not found: convert the checkpoint with ../shared/scripts/peer-llamacpp.sh or set GGUF`);
  const port = await freePort();
  // every slot gets the context of one request (llama-server splits -c over its slots)
  const ctx = parallel * (inputLen + outputLen + 32);
  const args = ['-m', gguf, '--host', '127.0.0.1', '--port', String(port), '--threads', String(threads)];
  args.push('-np', String(parallel), '-c', String(ctx), '--no-webui');
  const p = launch(llamaServer, args, 'llama-server');
  p.stdout!.resume();
  const url = `http://127.0.0.1:${port}`;
  await waitHealthy(url, p, 'llama-server');
  return url;
}

function bench(url: string, c: number, round: number): Promise<BenchResult> {
  return runBenchmark({
    url,
    model: name,
    requests: perClient * c,
    rate: Infinity,
    concurrency: c,
    inputLen,
    outputLen,
    seed: 1000 * round + c,
  });
}

const better = (a: BenchResult | undefined, b: BenchResult): BenchResult =>
  !a || b.outputThroughput > a.outputThroughput ? b : a;

async function main(): Promise<void> {
  console.log(
    `dsv3-serve (${modelDir}) vs llama-server (${gguf}, --threads ${threads}, -np ${parallel})${taskset ? `, both under taskset -c ${taskset}` : ''}; ${inputLen} prompt + ${outputLen} output tokens, ${perClient} requests per client, ${rounds} round(s)`,
  );
  const [dsv3Url, llamaUrl] = [await startDsv3(), await startLlama()];
  const servers = [
    { key: 'dsv3', url: dsv3Url },
    { key: 'llama', url: llamaUrl },
  ] as const;
  // one short warm-up request each (first-request costs are not serving throughput)
  for (const s of servers)
    await runBenchmark({ url: s.url, model: name, requests: 1, rate: Infinity, inputLen, outputLen: 2 });
  const best: Record<number, { dsv3?: BenchResult; llama?: BenchResult }> = {};
  for (let round = 0; round < rounds; round++)
    for (const c of concurrency) {
      // interleaved, alternating which goes first
      const order = (round + c) % 2 === 0 ? servers : [...servers].reverse();
      for (const s of order) {
        const r = await bench(s.url, c, round);
        if (r.failed) console.error(`${s.key} at ${c} clients: ${r.failed} failed: ${r.errors.slice(0, 3).join('; ')}`);
        const slot = (best[c] ??= {});
        slot[s.key] = better(slot[s.key], r);
        console.log(`\nround ${round}, ${s.key}, ${c} client(s):\n${formatTable(r)}`);
      }
    }
  const f = (x: number, d = 1): string => (Number.isFinite(x) ? x.toFixed(d) : '-');
  console.log(
    '\n| clients | output tok/s dsv3 | llama-server | dsv3 / llama | TTFT p50 ms dsv3 | llama-server | dsv3 / llama | TPOT p50 ms dsv3 | llama-server | dsv3 / llama |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  for (const c of concurrency) {
    const { dsv3: a, llama: b } = best[c]!;
    if (!a || !b) continue;
    console.log(
      `| ${c} | ${f(a.outputThroughput, 2)} | ${f(b.outputThroughput, 2)} | ${f(a.outputThroughput / b.outputThroughput, 2)} | ${f(a.ttftMs.p50, 0)} | ${f(b.ttftMs.p50, 0)} | ${f(a.ttftMs.p50 / b.ttftMs.p50, 2)} | ${f(a.tpotMs.p50, 0)} | ${f(b.tpotMs.p50, 0)} | ${f(a.tpotMs.p50 / b.tpotMs.p50, 2)} |`,
    );
  }
  console.log('(throughput ratio > 1: dsv3 ahead; latency ratio < 1: dsv3 ahead)');
  const slim = (r?: BenchResult) => r && { ...r, errors: undefined };
  console.log(
    JSON.stringify(
      Object.fromEntries(concurrency.map((c) => [c, { dsv3: slim(best[c]?.dsv3), llama: slim(best[c]?.llama) }])),
    ),
  );
}

main().then(
  () => {
    killAll();
    process.exit(0);
  },
  (e: unknown) => fail(e instanceof Error ? (e.stack ?? e.message) : String(e)),
);
