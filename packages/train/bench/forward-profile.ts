// Where the tiny (or mini) training step's forward spends the calling thread's time outside the GEMM
// engine's jobs: a V8 CPU profile of the calling thread over whole steps, of which only the samples
// inside each step's forward are kept (from the step's start to the loss's backward() call), split by
// the profile's leaf function and by its file (the caller's serial JavaScript: glue, row passes, graph
// recording). Samples inside an engine call (a threaded or many-product job, a row-kernel job) are the
// job's own time and counted apart; one-thread products (the engine's runSingle) stay in the table.
//   npx tsx --conditions=@dsv3/source bench/forward-profile.ts [tiny|mini] [--threads 2] [--steps 12] [--warmup 4]
//     [--top 40] [--interval µs] [--detail]
// `--detail` names each category's matching frame and leaf.
import { Session } from 'node:inspector/promises';
import { parseArgs } from 'node:util';
import { setGemmThreads, Tensor } from '@dsv3/core';
import { addOutsideSamples, type CategoryRule } from '../../model/bench/caller-profile.js';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    threads: { type: 'string', default: '2' },
    steps: { type: 'string', default: '12' },
    warmup: { type: 'string', default: '4' },
    top: { type: 'string', default: '40' },
    interval: { type: 'string', default: '100' },
    detail: { type: 'boolean', default: false },
  },
});
setGemmThreads(Number(values.threads));
const { step } = benchStep((positionals[0] ?? 'tiny') as TrainPreset, { recycleActivations: true });
for (let i = 0; i < Number(values.warmup); i++) await step();

// The forward's windows, on the profile's clock (V8's and hrtime's are both the monotonic clock, µs).
const micros = () => Number(process.hrtime.bigint() / 1000n);
const windows: [number, number][] = [];
let open = -1;
const backward = Tensor.prototype.backward;
Tensor.prototype.backward = function (this: Tensor, ...a: Parameters<Tensor['backward']>) {
  if (open >= 0) windows.push([open, micros()]);
  open = -1;
  return backward.apply(this, a);
};

const engineCalls = new Set(['runThreaded', 'gemvMany', 'weightGemmMany', 'runTasks', 'gemmMany']);
const session = new Session();
session.connect();
await session.post('Profiler.enable');
await session.post('Profiler.setSamplingInterval', { interval: Number(values.interval) });
await session.post('Profiler.start');
const steps = Number(values.steps);
const walls: number[] = [];
for (let i = 0; i < steps; i++) {
  open = micros();
  walls.push((await step()).wall * 1000);
}
const { profile } = await session.post('Profiler.stop');
session.disconnect();
Tensor.prototype.backward = backward;

const within = (at: number) => windows.some(([a, b]) => at >= a && at < b);
const all = new Map<string, number>();
addOutsideSamples(profile, new Set(), [], false, all, within);
const outside = new Map<string, number>();
addOutsideSamples(profile, engineCalls, [['one-thread product (runSingle)', /^runSingle$/]], false, outside, within);
// The nearest frame a rule names (the op or layer the serial work belongs to).
const rules: CategoryRule[] = [
  ['(garbage collector)', /^\(garbage collector\)$/],
  ['one-thread product (runSingle)', /^runSingle$/],
  ['matmul op (planning, outputs)', /^(matmul|matmulKernel|planMatmul|linears|linearsKernel)$/],
  ['cross-entropy', /crossEntropy/i],
  ['RMSNorm', /rms ?norm/i],
  ['RoPE / rotation tables', /rope|rotat|cosSin/i],
  ['training attention', /attention/i],
  ['MoE dispatch / combine / experts', /dispatch|gather|combine|scatter|expert|grouped/i],
  ['MoE routing (gate, top-k)', /gate|route|topk|group|sigmoid/i],
  ['SwiGLU / SiLU', /swiglu|silu/i],
  ['embedding', /embed/i],
  ['shape ops (reshape, split, permute, narrow)', /^(reshape|split|permute|narrow|concat|expand|strided)/i],
  ['autograd recording', /^(record|trackRecorded)$/],
];
const byCategory = new Map<string, number>();
addOutsideSamples(profile, engineCalls, rules, values.detail ?? false, byCategory, within);
const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
const forwardMs = windows.reduce((s, [a, b]) => s + (b - a) / 1000, 0) / steps;
const median = (x: number[]) => [...x].sort((a, b) => a - b)[x.length >> 1]!;
console.log(
  `steps ${steps}: wall median ${median(walls).toFixed(1)} ms; forward ${forwardMs.toFixed(1)} ms a step (profile start ${profile.startTime} µs, first window ${windows[0]?.[0]} µs)`,
);
console.log(
  `forward samples ${(sum(all) / steps).toFixed(1)} ms a step: in engine jobs ${((sum(all) - sum(outside)) / steps).toFixed(1)}, outside ${(sum(outside) / steps).toFixed(1)}`,
);
const byFile = new Map<string, number>();
for (const [k, v] of outside) {
  const file = k.startsWith('other: ') ? k.slice(k.lastIndexOf(' ') + 1) : k;
  byFile.set(file, (byFile.get(file) ?? 0) + v);
}
const table = (title: string, m: Map<string, number>) => {
  console.log(`\n${title} (ms a step)`);
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top)))
    console.log(`${(v / steps).toFixed(2).padStart(8)}  ${k}`);
};
table('outside jobs, by category (the nearest frame a rule names)', byCategory);
table('outside jobs, by file of the leaf', byFile);
table('outside jobs, by leaf function', outside);
