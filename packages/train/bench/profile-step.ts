// Profiles the CPU training step of a preset (the same step bench/run.ts times against PyTorch):
//   node --cpu-prof --import tsx --conditions=@dsv3/source bench/profile-step.ts [tiny|mini] [--steps N] [--ops]
// `--ops` prints the time spent in each kernel and autograd rule (core's op timing hook);
// `--no-recycle` leaves the step's activations to the garbage collector (trainStep's recycleActivations).
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
if (args.includes('--ops')) startOpProfile();
for (let i = 0; i < steps; i++) {
  const r = await step();
  console.log(
    `step ${i}: ${(r.wall * 1000).toFixed(0)} ms (${(r.cpu * 1000).toFixed(0)} ms of CPU), loss ${r.loss.toFixed(4)}`,
  );
}
if (args.includes('--ops')) {
  console.log('\nop (kernel, or grad:rule inclusive of its kernels) | calls/step | ms/step');
  for (const [name, t] of stopOpProfile().slice(0, 40))
    console.log(
      `${name.padEnd(28)} ${(t.calls / steps).toFixed(0).padStart(7)} ${(t.ms / steps).toFixed(1).padStart(9)}`,
    );
}
