// The tiny (or mini) training step job by job (core's gemmConfig.jobTrace): every job the GEMM engine
// hands to its workers, grouped by kind and by what it met as it started — a worker inside a background
// product (a deferred weight gradient: "bg busy") or asleep past its spin ("asleep") — with the ms per
// step the caller spent in it (working / waiting for the workers' last tasks), the share of its tasks
// the caller ran itself, and for products the rate over the caller's time. Then the step in three
// phases — forward (to the loss's backward() call), backward (until it returns, its background products
// collected), the rest (read-back, optimizer) — with the ms the worker spent in job tasks, in background
// tasks and idle. What is not in a traced job (serial JavaScript, one-thread
// products and row passes) is the rest of the wall time.
//   npx tsx --conditions=@dsv3/source bench/job-trace.ts [tiny|mini] [--threads 2] [--steps 12] [--warmup 4] [--spin µs]
import { parseArgs } from 'node:util';
import { setGemmThreads, Tensor } from '@dsv3/core';
import { gemmConfig, type TracedJob } from '../../core/src/cpu/gemm/config.js';
import { getEngine } from '../../core/src/cpu/gemm/runtime.js';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    threads: { type: 'string', default: '2' },
    steps: { type: 'string', default: '12' },
    warmup: { type: 'string', default: '4' },
    spin: { type: 'string' },
  },
});
if (values.spin !== undefined) gemmConfig.spinMicros = Number(values.spin);
setGemmThreads(Number(values.threads));
const { step } = benchStep((positionals[0] ?? 'tiny') as TrainPreset, { recycleActivations: true });
for (let i = 0; i < Number(values.warmup); i++) await step();
const engine = getEngine();
if (!engine) throw new Error('job-trace: no wasm GEMM engine');

interface Sum {
  jobs: number;
  workMs: number;
  waitMs: number;
  tasks: number;
  callerTasks: number;
  work: number;
  /** each job's join time (ms; -1: the workers ran none of its tasks) */
  joins: number[];
}
const sums = new Map<string, Sum>();
const kind = (what: string) => (what.startsWith('row kernel') ? 'row kernels' : what);

type Phase = 'forward' | 'backward' | 'rest';
const phases = new Map<Phase, { wall: number; jobMs: number; backgroundMs: number }>();
let phase: Phase = 'forward';
let since = 0;
/** Charges the time since the last switch (and the worker's busy time) to `phase`, then moves to `next`. */
const switchPhase = (next: Phase) => {
  const now = performance.now();
  const busy = engine.workerBusy(true);
  const p = phases.get(phase) ?? { wall: 0, jobMs: 0, backgroundMs: 0 };
  p.wall += now - since;
  p.jobMs += busy.jobMs;
  p.backgroundMs += busy.backgroundMs;
  phases.set(phase, p);
  since = now;
  phase = next;
};

// The phases from the backward call itself, not inferred from which job first finds background work posted.
const backward = Tensor.prototype.backward;
Tensor.prototype.backward = function (this: Tensor, ...args: Parameters<Tensor['backward']>) {
  switchPhase('backward');
  try {
    return backward.apply(this, args);
  } finally {
    switchPhase('rest');
  }
};
gemmConfig.jobTrace = (j: TracedJob) => {
  const key = `${kind(j.what)}${j.backgroundBusy ? ' | bg busy' : ''}${j.workersAsleep ? ' | asleep' : ''}`;
  const s = sums.get(key) ?? {
    jobs: 0,
    workMs: 0,
    waitMs: 0,
    tasks: 0,
    callerTasks: 0,
    work: 0,
    joins: [] as number[],
  };
  s.jobs++;
  s.workMs += j.workMs;
  s.waitMs += j.waitMs;
  s.tasks += j.tasks;
  s.callerTasks += j.callerTasks;
  s.work += j.work;
  s.joins.push(j.joinMs);
  sums.set(key, s);
};
const steps = Number(values.steps);
const walls: number[] = [];
for (let i = 0; i < steps; i++) {
  engine.workerBusy(true);
  since = performance.now();
  phase = 'forward';
  walls.push((await step()).wall * 1000);
  switchPhase('forward');
}
gemmConfig.jobTrace = null;
engine.workerBusy(false);

const median = (x: number[]) => [...x].sort((a, b) => a - b)[x.length >> 1]!;
const wallMean = walls.reduce((a, b) => a + b, 0) / steps;
console.log(`steps ${steps}: wall mean ${wallMean.toFixed(1)} ms, median ${median(walls).toFixed(1)} ms`);
console.log('phase      wall ms  worker in jobs  in background  idle   (ms per step)');
for (const [name, p] of phases)
  console.log(
    `${name.padEnd(9)} ${(p.wall / steps).toFixed(1).padStart(8)} ${(p.jobMs / steps).toFixed(1).padStart(15)} ${(p.backgroundMs / steps).toFixed(1).padStart(14)} ${((p.wall - p.jobMs - p.backgroundMs) / steps).toFixed(1).padStart(6)}`,
  );
console.log(
  'job kind                                  jobs/step  work ms  wait ms  total ms  caller tasks  GFLOP/s  join ms (median, worker ran none)',
);
/** The median join time of the jobs a worker took part in, and the share it took no part in. */
const joined = (joins: number[]): string => {
  const took = joins.filter((x) => x >= 0);
  const none = `${((100 * (joins.length - took.length)) / joins.length).toFixed(0)}%`;
  return `${took.length ? median(took).toFixed(3) : '-'} (${none})`;
};
let traced = 0;
for (const [key, s] of [...sums].sort((a, b) => b[1].workMs + b[1].waitMs - a[1].workMs - a[1].waitMs)) {
  const ms = (s.workMs + s.waitMs) / steps;
  traced += ms;
  const rate = s.work > 0 ? ((2 * s.work) / ((s.workMs + s.waitMs) / 1000) / 1e9).toFixed(1) : '';
  console.log(
    `${key.padEnd(42)} ${(s.jobs / steps).toFixed(1).padStart(9)} ${(s.workMs / steps).toFixed(2).padStart(8)} ${(s.waitMs / steps).toFixed(2).padStart(8)} ${ms.toFixed(2).padStart(9)} ${((100 * s.callerTasks) / s.tasks).toFixed(0).padStart(12)}% ${rate.padStart(8)}  ${joined(s.joins)}`,
  );
}
console.log(
  `traced jobs ${traced.toFixed(1)} ms / step; the rest (serial, untraced) ${(wallMean - traced).toFixed(1)} ms`,
);
