// The tiny (or mini) training step with an earlier pair of core's fused attention kernel files
// (`git show REV:packages/core/src/cpu/X > DIR/X` for attention-kernels.ts and rope-attention-kernels.ts)
// against the current ones, registered in turn step by step in one process: medians of the step's
// process CPU and wall time and of the attention kernels' time (core's op profile). Run from packages/train:
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/attention-step-ab.ts DIR [tiny|mini] [--steps 12] [--threads 1]
// Kernels register once, so this needs a temporary (never committed) dispatch in core/src/cpu/index.ts's
// trainKernels: `ropeAttention: (b, i, a) => (globalThis.__abRope?.ropeAttentionKernel ?? ropeAttentionKernel)(b, i, a)`,
// and likewise ropeAttentionBackward; without it both sides run the current kernels.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setGemmThreads } from '@dsv3/core';
import * as current from '../../core/src/cpu/rope-attention-kernels.js';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const dirArg = args[0];
if (!dirArg || dirArg.startsWith('-') || dirArg === 'tiny' || dirArg === 'mini')
  throw new Error('usage: attention-step-ab.ts DIR_WITH_OLD_KERNELS [tiny|mini] [--steps N] [--threads N]');
const preset = (args.find((a) => a === 'tiny' || a === 'mini') ?? 'tiny') as TrainPreset;
setGemmThreads(Number(flag('--threads', '1')));
// The old files' relative imports resolve against this tree's core/src/cpu, except the old pair's own.
const here = fileURLToPath(new URL('../../core/src/cpu/', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'attention-step-ab-'));
for (const f of ['attention-kernels.ts', 'rope-attention-kernels.ts'])
  writeFileSync(
    join(dir, f),
    readFileSync(join(dirArg, f), 'utf8').replace(/from '(\.\.?\/[^']+)'/g, (m, p: string) =>
      p === './attention-kernels.js' ? m : `from '${pathToFileURL(join(here, p)).href}'`,
    ),
  );
const old = (await import(pathToFileURL(join(dir, 'rope-attention-kernels.ts')).href)) as typeof current;
const sides = [
  { name: 'old', k: old, cpu: [] as number[], wall: [] as number[], attention: [] as number[] },
  { name: 'current', k: current, cpu: [] as number[], wall: [] as number[], attention: [] as number[] },
];
// Kernels are registered once, so the switch is a temporary dispatch in core/src/cpu/index.ts (see the header).
const use = (k: typeof current) => {
  (globalThis as { __abRope?: typeof current }).__abRope = k;
};
const { step } = benchStep(preset);
for (const s of sides) {
  use(s.k);
  await step(); // warm-up
}
for (let i = 0; i < Number(flag('--steps', '12')); i++)
  for (const s of i % 2 ? [...sides].reverse() : sides) {
    use(s.k);
    const g = globalThis as { __abCpu?: number };
    g.__abCpu = 0;
    const r = await step();
    s.cpu.push(r.cpu * 1000);
    s.wall.push(r.wall * 1000);
    s.attention.push(g.__abCpu);
  }
use(current);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
for (const s of sides)
  console.log(
    `${s.name.padEnd(8)} step ${median(s.cpu).toFixed(0)} ms CPU, ${median(s.wall).toFixed(0)} ms wall; attention kernels ${median(s.attention).toFixed(1)} ms CPU`,
  );
