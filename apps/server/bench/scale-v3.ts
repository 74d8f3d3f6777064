// Serving at scale on the V3-shaped checkpoint, every configuration as users run it (dsv3-serve
// processes) under the same dsv3-bench-serve load (streaming completions, token-id prompts, greedy):
//   1. colocated vs disaggregated (router + 1 prefill + 1 decode): TTFT, TPOT, throughput;
//      latent bytes the prefill moved per request vs an MHA cache of the same model;
//   2. expert-parallel over 2 ranks (--ep 2): per-rank expert bytes; per-rank rows max/mean under
//      the round-robin placement (no redundant experts) and then under EPLB's (redundant copies,
//      placed from the first load's counters, measured on a second load with other prompts);
//   3. the same EP server with and without the two-micro-batch overlap: TPOT and throughput.
// The configurations run one after the other (each loads the checkpoint in its own processes; two
// at once would not fit beside the other work on this machine), so read the ratios with the load.
// env: MODEL_DIR (/work/ckpt/v3-mini), CLIENTS (4), REQUESTS (8), INPUT (32), OUTPUT (8), ONLY
// (comma list of colocated,disagg,ep,overlap)
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { formatTable, runBenchmark, type BenchResult } from '../src/bench-serve.js';

const modelDir = process.env.MODEL_DIR ?? '/work/ckpt/v3-mini';
const clients = Number(process.env.CLIENTS ?? 4);
const requests = Number(process.env.REQUESTS ?? 8);
const inputLen = Number(process.env.INPUT ?? 32);
const outputLen = Number(process.env.OUTPUT ?? 8);
const only = new Set((process.env.ONLY ?? 'colocated,disagg,ep,overlap').split(','));
const name = basename(modelDir);
const cli = join(import.meta.dirname, '../src/cli.ts');

interface Proc {
  proc: ChildProcess;
  stdout(): string;
  waitFor(re: RegExp, from?: number): Promise<RegExpExecArray>;
}
const procs: ChildProcess[] = [];
process.on('exit', () => {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
});

function serve(args: string[]): Proc {
  const proc = spawn(
    process.execPath,
    ['--import', 'tsx', '--conditions=@dsv3/source', cli, '--model', modelDir, ...args],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  procs.push(proc);
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  return {
    proc,
    stdout: () => out,
    waitFor: (re, from = 0) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          const m = re.exec(out.slice(from));
          if (m) return resolve(m);
          if (proc.exitCode !== null || proc.signalCode !== null)
            return reject(new Error(`dsv3-serve ${args.join(' ')} exited: ${out}`));
          setTimeout(check, 100);
        };
        check();
      }),
  };
}

async function stop(...ps: Proc[]): Promise<void> {
  await Promise.all(
    ps.map(
      (p) =>
        new Promise<void>((resolve) => {
          if (p.proc.exitCode !== null || p.proc.signalCode !== null) return resolve();
          p.proc.once('exit', () => resolve());
          p.proc.kill('SIGKILL');
        }),
    ),
  );
}

async function bench(url: string, seed: number, what: string): Promise<BenchResult> {
  const r = await runBenchmark({
    url,
    model: name,
    requests,
    rate: Infinity,
    concurrency: clients,
    inputLen,
    outputLen,
    seed,
  });
  console.log(`\n${what}:\n${formatTable(r)}`);
  if (r.failed) throw new Error(`${what}: ${r.failed} requests failed: ${r.errors.slice(0, 3).join('; ')}`);
  return r;
}

const warm = (url: string): Promise<BenchResult> =>
  runBenchmark({ url, model: name, requests: 1, rate: Infinity, inputLen: 8, outputLen: 2, seed: 99 });

const common = ['--port', '0', '--kv-cache-tokens', '4096', '--max-num-seqs', '16'];
const readyUrl = /ready.*? on (http:\/\/\S+)/;
const summary: string[] = [];
const row = (what: string, r: BenchResult): string =>
  `| ${what} | ${r.ttftMs.p50.toFixed(0)} | ${r.tpotMs.p50.toFixed(0)} | ${r.outputThroughput.toFixed(2)} |`;

async function main(): Promise<void> {
  console.log(
    `${modelDir}: ${requests} requests, ${clients} concurrent clients, ${inputLen} prompt + ${outputLen} output tokens`,
  );
  let colocated: BenchResult | null = null;
  if (only.has('colocated')) {
    const s = serve(common);
    const url = (await s.waitFor(readyUrl))[1]!;
    await warm(url);
    colocated = await bench(url, 1, 'colocated');
    summary.push(row('colocated', colocated));
    await stop(s);
  }
  if (only.has('disagg')) {
    const router = serve([...common, '--role', 'router', '--control-port', '0']);
    const control = (await router.waitFor(/workers register at (\S+);/))[1]!;
    const workers = ['prefill', 'decode'].map((role) => serve([...common, '--role', role, '--router', control]));
    const url = (await router.waitFor(readyUrl))[1]!;
    await warm(url);
    await new Promise((res) => setTimeout(res, 2500));
    const before = await prefillStatus(control);
    const r = await bench(url, 1, 'disaggregated (router + 1 prefill + 1 decode)');
    // the router's view of its workers is refreshed by its health polls (every second)
    await new Promise((res) => setTimeout(res, 2500));
    const after = await prefillStatus(control);
    summary.push(row('disaggregated (router + 1 prefill + 1 decode)', r));
    if (colocated)
      summary.push(
        `| disaggregated / colocated | ${(r.ttftMs.p50 / colocated.ttftMs.p50).toFixed(2)} | ${(r.tpotMs.p50 / colocated.tpotMs.p50).toFixed(2)} | ${(r.outputThroughput / colocated.outputThroughput).toFixed(2)} |`,
      );
    const perRequest = (after.pageBytes - before.pageBytes) / (after.handled - before.handled);
    const cfg = JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')) as Record<string, number>;
    // the MHA cache of the same attention: K and V of every head, (nope + rope) wide, in every layer
    const mhaPerToken =
      2 * cfg.num_attention_heads! * (cfg.qk_nope_head_dim! + cfg.qk_rope_head_dim!) * cfg.num_hidden_layers! * 4;
    summary.push(
      `\nbytes moved per request (${inputLen - 1} prompt tokens): ${perRequest} latent (${after.bytesPerToken} B/token) vs ${mhaPerToken * (inputLen - 1)} for an MHA cache (${mhaPerToken} B/token): ${((mhaPerToken * (inputLen - 1)) / perRequest).toFixed(2)}x fewer`,
    );
    await stop(router, ...workers);
  }
  let epPlain: BenchResult | null = null;
  if (only.has('ep')) {
    const s = serve([...common, '--ep', '2', '--eplb-interval', '0']);
    const url = (await s.waitFor(readyUrl))[1]!;
    for (const m of s.stdout().matchAll(/rank \d holds .*/g)) summary.push(`\n${m[0]}`);
    await warm(url);
    epPlain = await bench(url, 1, 'EP 2 ranks, round-robin placement');
    summary.push(row('EP 2 ranks (round-robin placement)', epPlain));
    // re-place from the counters of that load; then measure the new placement on other prompts
    let at = s.stdout().length;
    s.proc.kill('SIGUSR2');
    const rr = (await s.waitFor(/max\/mean over the interval before: ([\d.]+)/, at))[1]!;
    await bench(url, 2, 'EP 2 ranks, EPLB placement');
    at = s.stdout().length;
    s.proc.kill('SIGUSR2');
    const eplb = (await s.waitFor(/max\/mean over the interval before: ([\d.]+)/, at))[1]!;
    summary.push(
      `\nper-rank rows max/mean: round-robin (no redundant experts) ${rr} → EPLB (redundant copies) ${eplb}`,
    );
    await stop(s);
  }
  if (only.has('overlap')) {
    const s = serve([...common, '--ep', '2', '--eplb-interval', '0', '--two-micro-batches']);
    const url = (await s.waitFor(readyUrl))[1]!;
    await warm(url);
    const r = await bench(url, 1, 'EP 2 ranks, round-robin placement, two-micro-batch overlap');
    summary.push(row('EP 2 ranks (round-robin), two-micro-batch overlap', r));
    if (epPlain)
      summary.push(
        `| overlap / no overlap | ${(r.ttftMs.p50 / epPlain.ttftMs.p50).toFixed(2)} | ${(r.tpotMs.p50 / epPlain.tpotMs.p50).toFixed(2)} | ${(r.outputThroughput / epPlain.outputThroughput).toFixed(2)} |`,
      );
    await stop(s);
  }
  console.log('\n| configuration | TTFT p50 (ms) | TPOT p50 (ms) | output tok/s |\n|---|---|---|---|');
  console.log(summary.join('\n'));
}

async function prefillStatus(control: string): Promise<{ pageBytes: number; handled: number; bytesPerToken: number }> {
  const ws = (await (await fetch(`${control}/workers`)).json()) as {
    role: string;
    status: { pageBytes: number; handled: number; bytesPerToken: number };
  }[];
  const p = ws.filter((w) => w.role === 'prefill');
  return {
    pageBytes: p.reduce((n, w) => n + w.status.pageBytes, 0),
    handled: p.reduce((n, w) => n + w.status.handled, 0),
    bytesPerToken: p[0]!.status.bytesPerToken,
  };
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`scale-v3: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
