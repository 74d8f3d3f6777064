// Profiles the CPU training step of a preset (the same step bench/run.ts times against PyTorch):
//   node --cpu-prof --import tsx --conditions=@dsv3/source bench/profile-step.ts [tiny|mini] [--steps N] [--ops]
// `--ops` prints the time spent in each kernel and autograd rule (core's op timing hook), the
// `--top N` most costly (default 40);
// `--no-recycle` leaves the step's activations to the garbage collector (trainStep's recycleActivations);
// `--gc` adds each step's garbage collections (count of major / minor ones and their pause).
import { PerformanceObserver, constants } from 'node:perf_hooks';
import { setGemmThreads, startOpProfile, stopOpProfile } from '@dsv3/core';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const preset = (args.find((a) => a === 'tiny' || a === 'mini') ?? 'tiny') as TrainPreset;
const steps = Number(flag('--steps', '3'));
setGemmThreads(Number(flag('--threads', '1')));
const { step } = benchStep(preset, { recycleActivations: !args.includes('--no-recycle') });
await step();
// GC entries arrive asynchronously: kept with their start times and counted per step window at the end.
const gcs: { at: number; ms: number; major: boolean }[] = [];
const observer = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const kind = ((e as { detail?: unknown }).detail as { kind?: number } | undefined)?.kind;
    gcs.push({ at: e.startTime, ms: e.duration, major: kind === constants.NODE_PERFORMANCE_GC_MAJOR });
  }
});
if (args.includes('--gc')) observer.observe({ entryTypes: ['gc'] });
if (args.includes('--ops')) startOpProfile();
const windows: [number, number][] = [];
for (let i = 0; i < steps; i++) {
  const t0 = performance.now();
  const r = await step();
  windows.push([t0, performance.now()]);
  console.log(
    `step ${i}: ${(r.wall * 1000).toFixed(0)} ms (${(r.cpu * 1000).toFixed(0)} ms of CPU), loss ${r.loss.toFixed(4)}`,
  );
}
if (args.includes('--gc')) {
  await new Promise((done) => setTimeout(done, 100));
  observer.disconnect();
  const per = windows.map(([a, b]) => gcs.filter((g) => g.at >= a && g.at < b));
  per.forEach((g, i) =>
    console.log(
      `GC step ${i}: ${g.filter((x) => x.major).length} major, ${g.filter((x) => !x.major).length} minor, ${g.reduce((s, x) => s + x.ms, 0).toFixed(1)} ms of pauses`,
    ),
  );
  const all = per.flat();
  console.log(
    `GC per step (mean of ${steps}): ${(all.filter((x) => x.major).length / steps).toFixed(2)} major, ${(all.filter((x) => !x.major).length / steps).toFixed(2)} minor, ${(all.reduce((s, x) => s + x.ms, 0) / steps).toFixed(1)} ms of pauses`,
  );
}
if (args.includes('--ops')) {
  console.log('\nop (kernel, or grad:rule inclusive of its kernels) | calls/step | ms/step');
  for (const [name, t] of stopOpProfile().slice(0, Number(flag('--top', '40'))))
    console.log(
      `${name.padEnd(28)} ${(t.calls / steps).toFixed(0).padStart(7)} ${(t.ms / steps).toFixed(1).padStart(9)}`,
    );
}
