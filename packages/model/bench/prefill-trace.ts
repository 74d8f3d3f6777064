// Where a thread idles during a prefill (2 threads): every job the GEMM engine hands to its workers
// (core's gemmConfig.jobTrace, the worker's busy time from WasmGemm.workerBusy) and every stretch between
// two jobs, when the worker has nothing to do. Per job kind: jobs, the caller's ms in them (working /
// waiting for the worker's last tasks), the worker's ms in them, the median join time, the share of tasks
// the caller ran; the threads' idle inside the jobs split into the gates' waits (both threads, between
// claiming a task and starting it), the worker's join (until the caller saw its first claim) and the
// tails (the caller waiting for the worker's last tasks, the worker's idle after its own). The stretches
// are charged to where the caller was: in its own code before an engine call (labelled by the model
// function making the call), or inside an engine call before its hand-out (staging: x copied, rounded,
// quantized), after it (copy-out) or in a job that ran on the caller alone.
// A site is the nearest stack frame outside core's engine (cpu/) — and, in brackets, the nearest outside
// core — of the engine call; a caller stretch's label is the site of the call that ends it.
// usage: tsx --conditions=@dsv3/source bench/prefill-trace.ts CKPT_DIR [--dtype bf16|fp8|f32]
//        [--threads 2] [--prefill 512] [--warmup 2] [--rounds 3] [--top 25]
import { parseArgs } from 'node:util';
import { setGemmThreads } from '@dsv3/core';
import { gemmConfig, type TracedJob } from '../../core/src/cpu/gemm/config.js';
import { getEngine } from '../../core/src/cpu/gemm/runtime.js';
import { WasmGemm } from '../../core/src/cpu/gemm/wasm-engine.js';
import { benchGeneration } from '../src/bench.js';
import { loadModel } from '../src/loader.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    dtype: { type: 'string', default: 'bf16' },
    threads: { type: 'string', default: '2' },
    prefill: { type: 'string', default: '512' },
    warmup: { type: 'string', default: '2' },
    rounds: { type: 'string', default: '3' },
    top: { type: 'string', default: '25' },
  },
});
if (positionals.length !== 1) throw new Error('usage: prefill-trace.ts CKPT_DIR [--dtype bf16|fp8|f32] ...');

/** The engine call's site: the nearest frame outside core's cpu/ (and the nearest outside core). */
function callSite(): string {
  const prepare = Error.prepareStackTrace;
  Error.prepareStackTrace = (_e, frames) => frames;
  const holder: { stack?: NodeJS.CallSite[] } = {};
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 30;
  Error.captureStackTrace(holder, callSite);
  Error.stackTraceLimit = limit;
  const frames = holder.stack ?? [];
  Error.prepareStackTrace = prepare;
  const name = (f: NodeJS.CallSite) => {
    const file = (f.getFileName() ?? '').replace(/^.*\/packages\//, '').replace(/^file:\/\//, '');
    const fn = f.getTypeName() && f.getMethodName() ? `${f.getTypeName()}.${f.getMethodName()}` : f.getFunctionName();
    return `${fn ?? '?'} (${file.replace(/^.*\//, '')})`;
  };
  const own = (f: NodeJS.CallSite) => (f.getFileName() ?? '').includes('prefill-trace');
  const engine = frames.find((f) => !own(f) && !/\/core\/src\/cpu\//.test(f.getFileName() ?? ''));
  const model = frames.find((f) => !own(f) && !/\/packages\/core\//.test(f.getFileName() ?? ''));
  if (!engine) return '?';
  return engine === model || !model ? name(engine) : `${name(engine)} [${name(model)}]`;
}

// --- the timeline: stretches between the engine's calls and jobs, charged by label ---
let tracing = false;
let last = 0; // end of the last charged stretch
let depth = 0;
let callLabel = '';
let callSiteNow = '';
const stretches = new Map<string, { ms: number; n: number }>();
const charge = (key: string, until: number) => {
  if (!tracing) return;
  const s = stretches.get(key) ?? { ms: 0, n: 0 };
  s.ms += until - last;
  s.n++;
  stretches.set(key, s);
  last = until;
};
type Labeller = (args: unknown[]) => string;
const calls: Record<string, Labeller> = {
  run: () => 'f32 GEMM',
  gemvMany: () => 'GEMV',
  weightGemmMany: (a) => `weight GEMM (${(a[0] as { kind: string }[])[0]?.kind ?? '?'})`,
  runRowKernelList: (a) => `row kernel ${a[0]}`,
  runTasks: (a) => String(a[2]),
};
const proto = WasmGemm.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
for (const [method, label] of Object.entries(calls)) {
  const inner = proto[method]!;
  proto[method] = function (this: unknown, ...a: unknown[]) {
    if (depth > 0 || !tracing) return inner.apply(this, a);
    callSiteNow = callSite();
    callLabel = label(a);
    charge(`caller | before ${callLabel} @ ${callSiteNow}`, performance.now());
    depth++;
    try {
      return inner.apply(this, a);
    } finally {
      depth--;
      charge(`engine call, caller only | ${callLabel} @ ${callSiteNow}`, performance.now());
    }
  };
}

interface JobSum {
  jobs: number;
  workMs: number;
  waitMs: number;
  workerMs: number;
  tasks: number;
  callerTasks: number;
  joins: number[];
  gateMs: number;
  joinMs: number;
  tailMs: number;
}
const jobs = new Map<string, JobSum>();
const emptySum = (): JobSum => ({
  jobs: 0,
  workMs: 0,
  waitMs: 0,
  workerMs: 0,
  tasks: 0,
  callerTasks: 0,
  joins: [],
  gateMs: 0,
  joinMs: 0,
  tailMs: 0,
});
const kind = (what: string) => (what.startsWith('row kernel') ? what.replace(/ \d+$/, '') : what);

setGemmThreads(Number(values.threads));
const model = loadModel(positionals[0]!, { weights: values.dtype as 'f32' | 'bf16' | 'fp8' });
const engine = getEngine();
if (!engine) throw new Error('prefill-trace: no wasm GEMM engine');
const prefill = Number(values.prefill);
for (let r = 0; r < Number(values.warmup); r++) await benchGeneration(model, { prefill, decode: 0 });

gemmConfig.jobTrace = (j: TracedJob) => {
  if (!tracing) return;
  const end = performance.now();
  const start = end - j.workMs - j.waitMs;
  charge(`engine call, before hand-out | ${callLabel} @ ${callSiteNow}`, start);
  last = end;
  const key = `${kind(j.what)} @ ${callSiteNow}`;
  const s = jobs.get(key) ?? emptySum();
  const worker = engine.workerBusy(true);
  const wall = j.workMs + j.waitMs;
  const join = j.joinMs >= 0 ? Math.min(j.joinMs, wall) : wall;
  s.jobs++;
  s.workMs += j.workMs;
  s.waitMs += j.waitMs;
  s.workerMs += worker.jobMs;
  s.gateMs += j.gateMs + worker.jobGateMs;
  s.joinMs += join;
  s.tailMs += j.waitMs + Math.max(0, wall - worker.jobMs - worker.jobGateMs - join);
  s.tasks += j.tasks;
  s.callerTasks += j.callerTasks;
  s.joins.push(j.joinMs);
  jobs.set(key, s);
};

const rounds = Number(values.rounds);
const walls: number[] = [];
for (let r = 0; r < rounds; r++) {
  engine.workerBusy(true);
  tracing = true;
  const t = performance.now();
  last = t;
  await benchGeneration(model, { prefill, decode: 0 });
  const end = performance.now();
  charge('caller | after the last engine call', end);
  tracing = false;
  walls.push(end - t);
}
gemmConfig.jobTrace = null;
engine.workerBusy(false);

const perPrefill = (ms: number) => (ms / rounds).toFixed(2).padStart(8);
const median = (x: number[]) => [...x].sort((a, b) => a - b)[x.length >> 1]!;
const wall = walls.reduce((a, b) => a + b, 0) / rounds;
let jobWall = 0,
  jobWorker = 0;
for (const s of jobs.values()) {
  jobWall += s.workMs + s.waitMs;
  jobWorker += s.workerMs;
}
const gaps = [...stretches.values()].reduce((a, s) => a + s.ms, 0) / rounds;
console.log(
  `${values.dtype}, ${values.threads} threads, prefill ${prefill}: wall ${walls.map((w) => w.toFixed(0)).join(' / ')} ms; a prefill: ` +
    `jobs ${(jobWall / rounds).toFixed(1)} ms (worker in them ${(jobWorker / rounds).toFixed(1)}, idle in them ${((jobWall - jobWorker) / rounds).toFixed(1)}), ` +
    `between jobs ${gaps.toFixed(1)} ms (worker idle); the worker busy ${(jobWorker / rounds).toFixed(1)} of ${wall.toFixed(1)} ms`,
);

// by job kind (sites merged), then the largest (kind, site) rows
const byKind = new Map<string, JobSum>();
for (const [key, s] of jobs) {
  const k = key.replace(/ @ .*$/, '');
  const t = byKind.get(k) ?? emptySum();
  t.jobs += s.jobs;
  t.workMs += s.workMs;
  t.waitMs += s.waitMs;
  t.workerMs += s.workerMs;
  t.tasks += s.tasks;
  t.callerTasks += s.callerTasks;
  t.joins.push(...s.joins);
  t.gateMs += s.gateMs;
  t.joinMs += s.joinMs;
  t.tailMs += s.tailMs;
  byKind.set(k, t);
}
const joined = (joins: number[]): string => {
  const took = joins.filter((x) => x >= 0);
  return `${took.length ? median(took).toFixed(3) : '-'} (${((100 * (joins.length - took.length)) / joins.length).toFixed(0)}% none)`;
};
const printJobs = (title: string, rows: Map<string, JobSum>, top: number) => {
  console.log(
    `\n${title}\n  jobs   caller work  caller wait  worker ms  worker idle  | idle: gates  join     tails  | caller tasks  join ms median (worker ran none)`,
  );
  for (const [key, s] of [...rows].sort((a, b) => b[1].workMs + b[1].waitMs - a[1].workMs - a[1].waitMs).slice(0, top))
    console.log(
      `${(s.jobs / rounds).toFixed(0).padStart(6)} ${perPrefill(s.workMs)}    ${perPrefill(s.waitMs)}   ${perPrefill(s.workerMs)}   ${perPrefill(s.workMs + s.waitMs - s.workerMs)}   ${perPrefill(s.gateMs)} ${perPrefill(s.joinMs)} ${perPrefill(s.tailMs)}   ${((100 * s.callerTasks) / s.tasks).toFixed(0).padStart(9)}%    ${joined(s.joins)}  ${key}`,
    );
};
printJobs('job kinds (ms a prefill)', byKind, 1000);
printJobs(`jobs by site, largest ${values.top}`, jobs, Number(values.top));

// the stretches between jobs: by kind of stretch, then the largest by label
const byKindOfStretch = new Map<string, number>();
for (const [key, s] of stretches) {
  const k = key.replace(/ \| .*$/, '');
  byKindOfStretch.set(k, (byKindOfStretch.get(k) ?? 0) + s.ms);
}
console.log('\nworker idle between jobs (ms a prefill), by where the caller was');
for (const [k, ms] of [...byKindOfStretch].sort((a, b) => b[1] - a[1])) console.log(`${perPrefill(ms)}  ${k}`);
console.log(`\nlargest stretches (ms a prefill, count a prefill), top ${values.top}`);
for (const [key, s] of [...stretches].sort((a, b) => b[1].ms - a[1].ms).slice(0, Number(values.top)))
  console.log(`${perPrefill(s.ms)} ${(s.n / rounds).toFixed(0).padStart(5)}  ${key}`);
