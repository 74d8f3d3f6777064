// dsv3-plan's serving predictions against dsv3-serve on this machine: the same model (tiny-v3 by
// default) served colocated (one process), expert-parallel over two ranks (--ep 2) and disaggregated
// (router + one prefill + one decode process), each under the same dsv3-bench-serve load (streaming
// completions, random token-id prompts, ignore_eos, greedy); the deployments run interleaved, --repeat
// times, and each figure is the median over the repeats. Predicted: the same load simulated
// (simulateServeLoad) on this machine's probe as the cluster (each process one rank with its share);
// one free parameter, the fraction of the probed rates a step reaches, is fitted on the colocated
// TPOT, and every other figure is a prediction with it. Also: latent-KV bytes per token, predicted
// against what the prefill worker reports shipping.
//   cd packages/parallel && npm run bench:validate-serve -- [--repeat 3] [--model DIR] [--requests 16]
//        [--concurrency 4] [--input 48] [--output 16] [--json out.json] [--from out.json]
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { byteLevelTokenizer, kvBytesPerToken, parseConfig, saveTokenizer } from '@dsv3/model';
import {
  machineCluster,
  predictionError,
  simulateServeLoad,
  type EngineLimits,
  type MachineProbe,
  type ServeDeployment,
  type ServeLoad,
  type ServeNumerics,
} from '../src/index.js';
import { describeProbe, median, probeMachine, root, runCommand, tsx } from './validate-common.js';

const arg = (name: string, def: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
};
const checkpoint = arg('model', join(root, '../shared/fixtures/tiny-v3'));
const modelDir = await servable(checkpoint);
const repeat = Number(arg('repeat', '3'));
const from = arg('from', '');
const jsonOut = arg('json', '');
const server = join(root, 'apps/server/src/cli.ts');
const benchCli = join(root, 'apps/server/src/bench-serve-cli.ts');
const name = basename(modelDir);
const limits: EngineLimits = { maxBatchedTokens: 512, maxRunningSeqs: 16 };
const common = ['--port', '0', '--kv-cache-tokens', '4096', '--max-num-seqs', String(limits.maxRunningSeqs)];
const DEPLOYMENTS = ['colocated', 'ep2', 'disagg'] as const;
type Deployment = (typeof DEPLOYMENTS)[number];

interface Run {
  ttft: number;
  tpot: number;
  throughput: number;
}
interface Measured {
  probe: MachineProbe;
  load: ServeLoad;
  model: string;
  runs: Record<Deployment, Run[]>;
  /** Latent bytes per token the prefill worker ships (its /status). */
  shippedBytesPerToken: number;
  loadAverage: number[];
}

/**
 * The checkpoint as dsv3-serve needs it: with a tokenizer. One without (tiny-v3) gets a directory of
 * links to its config and weights beside @dsv3/model's byte-level tokenizer padded to its vocabulary.
 */
async function servable(dir: string): Promise<string> {
  if (existsSync(join(dir, 'tokenizer.json'))) return dir;
  const out = join(mkdtempSync(join(tmpdir(), 'dsv3-validate-serve-')), basename(dir));
  mkdirSync(out);
  for (const f of ['config.json', 'model.safetensors']) symlinkSync(join(dir, f), join(out, f));
  const vocab = (JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size;
  await saveTokenizer(
    byteLevelTokenizer({ extraSpecialTokens: Array.from({ length: vocab - 258 }, (_, i) => `<extra_${i}>`) }),
    out,
  );
  return out;
}

const children: ChildProcess[] = [];
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) process.kill(-c.pid!, 'SIGKILL');
  if (modelDir !== checkpoint) rmSync(join(modelDir, '..'), { recursive: true, force: true });
});

/** Starts dsv3-serve (its own process group, so that stopping it stops the ranks it launched). */
function serve(args: string[]): { proc: ChildProcess; waitFor(re: RegExp): Promise<RegExpExecArray> } {
  const proc = spawn(process.execPath, [...tsx, server, '--model', modelDir, ...common, ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  children.push(proc);
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  return {
    proc,
    waitFor: (re) =>
      new Promise((resolve, reject) => {
        const t0 = Date.now();
        const check = (): void => {
          const m = re.exec(out);
          if (m) return resolve(m);
          if (proc.exitCode !== null || proc.signalCode !== null)
            return reject(new Error(`dsv3-serve ${args.join(' ')} exited:\n${out.slice(-3000)}`));
          if (Date.now() - t0 > 600_000) return reject(new Error(`dsv3-serve ${args.join(' ')}: not ready in 10 min`));
          setTimeout(check, 100);
        };
        check();
      }),
  };
}

async function stop(...ps: ChildProcess[]): Promise<void> {
  await Promise.all(
    ps.map(
      (p) =>
        new Promise<void>((resolve) => {
          if (p.exitCode !== null || p.signalCode !== null) return resolve();
          p.once('exit', () => resolve());
          process.kill(-p.pid!, 'SIGKILL');
        }),
    ),
  );
}

async function bench(url: string, load: ServeLoad, seed: number): Promise<Run> {
  const dir = mkdtempSync(join(tmpdir(), 'dsv3-validate-serve-'));
  try {
    const file = join(dir, 'bench.json');
    const args = ['--url', url, '--model', name, '--seed', String(seed), '--json', file];
    args.push('--requests', String(load.requests), '--concurrency', String(load.concurrency));
    args.push('--input-len', String(load.inputLen), '--output-len', String(load.outputLen));
    await runCommand(process.execPath, [...tsx, benchCli, ...args], root);
    const r = JSON.parse(readFileSync(file, 'utf8')) as {
      failed: number;
      ttftMs: { p50: number };
      tpotMs: { p50: number };
      outputThroughput: number;
    };
    if (r.failed) throw new Error(`${r.failed} requests failed`);
    return { ttft: r.ttftMs.p50 / 1e3, tpot: r.tpotMs.p50 / 1e3, throughput: r.outputThroughput };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const readyUrl = /ready.*? on (http:\/\/\S+)/;
const warmLoad: ServeLoad = { requests: 1, concurrency: 1, inputLen: 8, outputLen: 2 };

async function measureOne(d: Deployment, load: ServeLoad, seed: number): Promise<{ run: Run; shipped?: number }> {
  if (d === 'colocated' || d === 'ep2') {
    const s = serve(d === 'ep2' ? ['--ep', '2', '--eplb-interval', '0'] : []);
    try {
      const url = (await s.waitFor(readyUrl))[1]!;
      await bench(url, warmLoad, 99);
      return { run: await bench(url, load, seed) };
    } finally {
      await stop(s.proc);
    }
  }
  const router = serve(['--role', 'router', '--control-port', '0']);
  const workers: ChildProcess[] = [];
  try {
    const control = (await router.waitFor(/workers register at (\S+);/))[1]!;
    for (const role of ['prefill', 'decode']) workers.push(serve(['--role', role, '--router', control]).proc);
    const url = (await router.waitFor(readyUrl))[1]!;
    await bench(url, warmLoad, 99);
    const run = await bench(url, load, seed);
    const ws = (await (await fetch(`${control}/workers`)).json()) as {
      role: string;
      status: { bytesPerToken: number };
    }[];
    return { run, shipped: ws.find((w) => w.role === 'prefill')!.status.bytesPerToken };
  } finally {
    await stop(router.proc, ...workers);
  }
}

async function measureAll(): Promise<Measured> {
  const load: ServeLoad = {
    requests: Number(arg('requests', '16')),
    concurrency: Number(arg('concurrency', '4')),
    inputLen: Number(arg('input', '48')),
    outputLen: Number(arg('output', '16')),
  };
  process.stderr.write('[validate-serve] probing the machine...\n');
  const loads = [loadavg()[0]!];
  const probe = await probeMachine();
  const runs = { colocated: [], ep2: [], disagg: [] } as Record<Deployment, Run[]>;
  let shipped = Number.NaN;
  for (let r = 0; r < repeat; r++)
    for (const d of DEPLOYMENTS) {
      process.stderr.write(`[validate-serve] round ${r + 1}/${repeat}: ${d}...\n`);
      const m = await measureOne(d, load, 1 + r);
      runs[d].push(m.run);
      if (m.shipped !== undefined) shipped = m.shipped;
      loads.push(loadavg()[0]!);
    }
  return { probe, load, model: checkpoint, runs, shippedBytesPerToken: shipped, loadAverage: loads };
}

const m: Measured = from ? (JSON.parse(readFileSync(from, 'utf8')) as Measured) : await measureAll();
const model = parseConfig(JSON.parse(readFileSync(join(m.model, 'config.json'), 'utf8')));
// dsv3-serve on the CPU: f32 weights, f32 latents, f32 activations
const numerics: ServeNumerics = { weightBytes: 4, kvBytes: 4, activationBytes: 4 };
const deployments: Record<Deployment, { ranks: number; d: ServeDeployment }> = {
  colocated: { ranks: 1, d: { kind: 'colocated', ranks: 1 } },
  ep2: { ranks: 2, d: { kind: 'colocated', ranks: 2 } },
  disagg: { ranks: 2, d: { kind: 'disaggregated', prefill: limits, decode: limits } },
};
const predict = (d: Deployment, efficiency: number) =>
  simulateServeLoad(
    model,
    machineCluster(m.probe, deployments[d].ranks, efficiency),
    numerics,
    m.load,
    deployments[d].d,
    limits,
  );
const measured = Object.fromEntries(
  DEPLOYMENTS.map((d) => [
    d,
    {
      ttft: median(m.runs[d].map((r) => r.ttft)),
      tpot: median(m.runs[d].map((r) => r.tpot)),
      throughput: median(m.runs[d].map((r) => r.throughput)),
    },
  ]),
) as Record<Deployment, Run>;
// the one free parameter: the efficiency at which the colocated TPOT is predicted exactly (bisection; TPOT falls as it rises)
let lo = 1e-6;
let hi = 1;
for (let i = 0; i < 60; i++) {
  const mid = Math.sqrt(lo * hi);
  if (predict('colocated', mid).tpotP50 > measured.colocated.tpot) lo = mid;
  else hi = mid;
}
const efficiency = Math.sqrt(lo * hi);
const rows: { deployment: Deployment; metric: string; measured: number; predicted: number; error: number }[] = [];
for (const d of DEPLOYMENTS) {
  const p = predict(d, efficiency);
  const me = measured[d];
  for (const [metric, a, b] of [
    ['TTFT p50 (ms)', me.ttft * 1e3, p.ttftP50 * 1e3],
    ['TPOT p50 (ms)', me.tpot * 1e3, p.tpotP50 * 1e3],
    ['output tok/s', me.throughput, p.outputTokensPerSecond],
  ] as const)
    rows.push({ deployment: d, metric, measured: a, predicted: b, error: predictionError(b, a) });
}
const kvPredicted = kvBytesPerToken(model, numerics.kvBytes);
const loads = m.loadAverage;
console.log(
  `${basename(m.model)}: ${m.load.requests} requests, ${m.load.concurrency} in flight, ${m.load.inputLen} prompt + ${m.load.outputLen} generated tokens; ` +
    `machine: ${describeProbe(m.probe)}; efficiency fitted on the colocated TPOT: ${(100 * efficiency).toFixed(1)}% of the probed rates; ` +
    `load average ${Math.min(...loads).toFixed(1)}–${Math.max(...loads).toFixed(1)}; ${m.runs.colocated.length} runs of each deployment`,
);
console.log('| deployment | metric | measured (runs) | predicted | error |\n|---|---|---:|---:|---:|');
const fmt = (x: number): string => (x >= 100 ? x.toFixed(0) : x.toFixed(2));
for (const r of rows) {
  const runs = m.runs[r.deployment].map((x) =>
    r.metric.startsWith('TTFT') ? x.ttft * 1e3 : r.metric.startsWith('TPOT') ? x.tpot * 1e3 : x.throughput,
  );
  const fitted = r.deployment === 'colocated' && r.metric.startsWith('TPOT');
  console.log(
    `| ${r.deployment} | ${r.metric} | ${fmt(r.measured)} (${runs.map(fmt).join(', ')}) | ${fmt(r.predicted)} | ${fitted ? '(fitted)' : `${(100 * r.error).toFixed(0)}%`} |`,
  );
}
console.log(
  `| disagg | latent-KV bytes per token shipped | ${m.shippedBytesPerToken} | ${kvPredicted} | ${(100 * predictionError(kvPredicted, m.shippedBytesPerToken)).toFixed(0)}% |`,
);
if (jsonOut) writeFileSync(jsonOut, JSON.stringify({ ...m, efficiency, rows, kvPredicted }, null, 2));
