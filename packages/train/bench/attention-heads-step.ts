// The tiny (or mini) training step with the fused attention's products issued for G (batch, head)
// pairs per GEMM call — setAttentionScoreBudget at G·S² — for each G of --groups (1: one call per
// head; 0: the default budget), alternating step by step in one process: medians of the step's process
// CPU and wall time and of the attention kernels' CPU time (core's op profile). All are bitwise the
// same computation (core's test/attention-head-groups.test.ts).
//   npx tsx --conditions=@dsv3/source bench/attention-heads-step.ts [tiny|mini] [--steps 12] [--threads 2] [--groups 1,0]
import { setAttentionScoreBudget, setGemmThreads, startOpProfile, stopOpProfile } from '@dsv3/core';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const preset = (args.find((a) => a === 'tiny' || a === 'mini') ?? 'tiny') as TrainPreset;
setGemmThreads(Number(flag('--threads', '2')));
const { step, seqLen } = benchStep(preset);
const sides = flag('--groups', '1,0')
  .split(',')
  .map(Number)
  .map((g) => ({
    name: g === 0 ? 'default budget' : `${g} pair(s) per call`,
    budget: g === 0 ? undefined : g * seqLen * seqLen,
    cpu: [] as number[],
    wall: [] as number[],
    attention: [] as number[],
  }));
for (const s of sides) {
  setAttentionScoreBudget(s.budget);
  await step(); // warm-up
}
for (let i = 0; i < Number(flag('--steps', '12')); i++)
  for (const s of sides) {
    setAttentionScoreBudget(s.budget);
    startOpProfile();
    const r = await step();
    const ops = new Map(stopOpProfile());
    s.cpu.push(r.cpu * 1000);
    s.wall.push(r.wall * 1000);
    s.attention.push((ops.get('ropeAttention')?.ms ?? 0) + (ops.get('ropeAttentionBackward')?.ms ?? 0));
  }
setAttentionScoreBudget();
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
for (const s of sides)
  console.log(
    `${s.name.padEnd(18)} step ${median(s.cpu).toFixed(0)} ms CPU, ${median(s.wall).toFixed(0)} ms wall; attention ${median(s.attention).toFixed(1)} ms CPU`,
  );
