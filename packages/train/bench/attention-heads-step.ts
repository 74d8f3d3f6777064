// The tiny (or mini) training step with the fused attention's products issued one GEMM call per
// (batch, head) — setAttentionScoreBudget at one head's S x S — against the default (every pair of a
// layer in one batched call per product), alternating step by step in one process: medians of the
// step's process CPU and wall time and of the attention kernels' CPU time (core's op profile).
// The two are bitwise the same computation (core's test/attention-head-groups.test.ts).
//   npx tsx --conditions=@dsv3/source bench/attention-heads-step.ts [tiny|mini] [--steps 12] [--threads 2]
import { setAttentionScoreBudget, setGemmThreads, startOpProfile, stopOpProfile } from '@dsv3/core';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const preset = (args.find((a) => a === 'tiny' || a === 'mini') ?? 'tiny') as TrainPreset;
setGemmThreads(Number(flag('--threads', '2')));
const { step, seqLen } = benchStep(preset);
const sides = [
  { name: 'one call per head', budget: seqLen * seqLen },
  { name: 'heads batched', budget: undefined },
].map((s) => ({ ...s, cpu: [] as number[], wall: [] as number[], attention: [] as number[] }));
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
