// The tiny (or mini) CPU training step alone, for old / new A/Bs of a change (run alternately with the
// old and the new sources in place): median and fastest wall, median process CPU and every step's loss
// (to 6 decimals, so a bitwise change shows the same line).
//   npx tsx --conditions=@dsv3/source bench/step-time.ts [tiny|mini] [--threads 2] [--steps 8] [--warmup 4] [--spin µs]
//     [--host-outputs] [--staged] [--output-mib N] [--gc]
// `--spin` sets how long the GEMM's workers poll for the next job before sleeping (gemmConfig.spinMicros).
// `--host-outputs` keeps the kernels' outputs in host memory (gemmConfig.residentOutputs off: the A/B of
// resident outputs). `--staged` counts, per step, the operand bytes the products find outside the engine's
// memory (which a job copies in; an operand two products of one job share counts twice) and prints the
// engine's output blocks after every step (flat when nothing leaks). `--output-mib` sets the budget of
// live resident outputs (gemmConfig.residentOutputBytes); `--gc` collects after every step (node --expose-gc).
import { parseArgs } from 'node:util';
import { setGemmThreads } from '@dsv3/core';
import { gemmConfig } from '../../core/src/cpu/gemm/config.js';
import { residentOutputStats } from '../../core/src/cpu/resident-outputs.js';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    threads: { type: 'string', default: '2' },
    steps: { type: 'string', default: '8' },
    warmup: { type: 'string', default: '4' },
    spin: { type: 'string' },
    'host-outputs': { type: 'boolean', default: false },
    staged: { type: 'boolean', default: false },
    'output-mib': { type: 'string' },
    gc: { type: 'boolean', default: false },
  },
});
const preset = (positionals[0] ?? 'tiny') as TrainPreset;
if (values.spin !== undefined) gemmConfig.spinMicros = Number(values.spin);
if (values['host-outputs']) gemmConfig.residentOutputs = false;
if (values['output-mib'] !== undefined) gemmConfig.residentOutputBytes = Number(values['output-mib']) * 2 ** 20;
const gc = (globalThis as { gc?: () => void }).gc;
if (values.gc && !gc) throw new Error('--gc needs node --expose-gc');
let stagedBytes = 0;
if (values.staged)
  gemmConfig.trace = ({ m, n, k, batch, resident }) => {
    stagedBytes += batch * ((resident.a ? 0 : m * k * 4) + (resident.b ? 0 : k * n * 4));
  };
setGemmThreads(Number(values.threads));
const { step } = benchStep(preset, { recycleActivations: true });
for (let i = 0; i < Number(values.warmup); i++) await step();
const [walls, cpus, losses]: [number[], number[], string[]] = [[], [], []];
for (let i = 0; i < Number(values.steps); i++) {
  stagedBytes = 0;
  const r = await step();
  walls.push(r.wall * 1000);
  cpus.push(r.cpu * 1000);
  losses.push(r.loss.toFixed(6));
  if (values.gc) {
    gc!();
    await new Promise((done) => setTimeout(done, 5)); // the finalizers run between tasks
  }
  if (values.staged) {
    const o = residentOutputStats();
    console.log(
      `step ${i}: operands outside the engine ${(stagedBytes / 1e6).toFixed(1)} MB; output blocks ${o.blocks}, ${(o.bytes / 1e6).toFixed(1)} MB`,
    );
  }
}
const median = (x: number[]) => [...x].sort((a, b) => a - b)[x.length >> 1]!.toFixed(1);
console.log(
  `${preset}, ${values.threads} thread(s): wall median ${median(walls)} ms (fastest ${Math.min(...walls).toFixed(1)}), CPU median ${median(cpus)} ms; losses ${losses.join(' ')}`,
);
