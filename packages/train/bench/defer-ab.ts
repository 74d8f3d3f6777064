// The tiny (or mini) CPU training step with the backward's weight gradients deferred to the GEMM's
// worker (core's sgemmDeferred, the default) against the same step without (gemmConfig.deferProducts
// off: they run in the pass's own jobs), steps alternating in one process so both see the same load:
// median and fastest wall, median process CPU, how many pairs the deferred step won, and whether
// every pair's losses are equal (the change is bitwise: they must be). `--switch residentOutputs` A/Bs
// the kernels' outputs in the engine's memory (on, the default) against host arrays (off) instead.
//   npx tsx --conditions=@dsv3/source bench/defer-ab.ts [tiny|mini] [--threads 2] [--pairs 30] [--warmup 4]
//     [--switch deferProducts|residentOutputs]
import { parseArgs } from 'node:util';
import { setGemmThreads } from '@dsv3/core';
import { gemmConfig } from '../../core/src/cpu/gemm/config.js';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    threads: { type: 'string', default: '2' },
    pairs: { type: 'string', default: '30' },
    warmup: { type: 'string', default: '4' },
    switch: { type: 'string', default: 'deferProducts' },
  },
});
const knob = values.switch as 'deferProducts' | 'residentOutputs';
if (knob !== 'deferProducts' && knob !== 'residentOutputs')
  throw new Error(`--switch: deferProducts or residentOutputs, not ${knob}`);
setGemmThreads(Number(values.threads));
// Two models from the same seed, one per variant, so both train the same steps in lockstep.
const variants = {
  off: benchStep((positionals[0] ?? 'tiny') as TrainPreset, { recycleActivations: true }),
  on: benchStep((positionals[0] ?? 'tiny') as TrainPreset, { recycleActivations: true }),
};
const run = async (v: 'off' | 'on') => {
  gemmConfig[knob] = v === 'on';
  return variants[v].step();
};
for (let i = 0; i < Number(values.warmup); i++) for (const v of ['off', 'on'] as const) await run(v);
const pairs = Number(values.pairs);
const res = { off: { wall: [] as number[], cpu: [] as number[] }, on: { wall: [] as number[], cpu: [] as number[] } };
let sameLosses = true;
for (let i = 0; i < pairs; i++) {
  const losses: Record<string, number> = {};
  for (const v of i % 2 ? (['off', 'on'] as const) : (['on', 'off'] as const)) {
    const r = await run(v);
    res[v].wall.push(r.wall * 1000);
    res[v].cpu.push(r.cpu * 1000);
    losses[v] = r.loss;
  }
  if (losses.on !== losses.off) sameLosses = false;
}
gemmConfig[knob] = true;
const median = (x: number[]) => [...x].sort((a, b) => a - b)[x.length >> 1]!;
for (const v of ['off', 'on'] as const)
  console.log(
    `${knob} ${v.padEnd(3)}: wall median ${median(res[v].wall).toFixed(1)} ms (fastest ${Math.min(...res[v].wall).toFixed(1)}), CPU median ${median(res[v].cpu).toFixed(1)} ms`,
  );
const wins = res.on.wall.filter((w, i) => w < res.off.wall[i]!).length;
const ratio = median(res.off.wall.map((w, i) => w / res.on.wall[i]!));
console.log(
  `on faster in ${wins}/${pairs} pairs; median pair ratio off / on ${ratio.toFixed(3)}; losses equal in every pair: ${sameLosses}`,
);
