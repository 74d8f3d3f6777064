// The tiny (or mini) CPU training step alone, for old / new A/Bs of a change (run alternately with the
// old and the new sources in place): median and fastest wall, median process CPU and every step's loss
// (to 6 decimals, so a bitwise change shows the same line).
//   npx tsx --conditions=@dsv3/source bench/step-time.ts [tiny|mini] [--threads 2] [--steps 8] [--warmup 4] [--spin µs]
// `--spin` sets how long the GEMM's workers poll for the next job before sleeping (gemmConfig.spinMicros).
import { parseArgs } from 'node:util';
import { setGemmThreads } from '@dsv3/core';
import { gemmConfig } from '../../core/src/cpu/gemm/config.js';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    threads: { type: 'string', default: '2' },
    steps: { type: 'string', default: '8' },
    warmup: { type: 'string', default: '4' },
    spin: { type: 'string' },
  },
});
const preset = (positionals[0] ?? 'tiny') as TrainPreset;
if (values.spin !== undefined) gemmConfig.spinMicros = Number(values.spin);
setGemmThreads(Number(values.threads));
const { step } = benchStep(preset, { recycleActivations: true });
for (let i = 0; i < Number(values.warmup); i++) await step();
const [walls, cpus, losses]: [number[], number[], string[]] = [[], [], []];
for (let i = 0; i < Number(values.steps); i++) {
  const r = await step();
  walls.push(r.wall * 1000);
  cpus.push(r.cpu * 1000);
  losses.push(r.loss.toFixed(6));
}
const median = (x: number[]) => [...x].sort((a, b) => a - b)[x.length >> 1]!.toFixed(1);
console.log(
  `${preset}, ${values.threads} thread(s): wall median ${median(walls)} ms (fastest ${Math.min(...walls).toFixed(1)}), CPU median ${median(cpus)} ms; losses ${losses.join(' ')}`,
);
