// Times the current tree's f32 RMSNorm forward and backward kernels on the tiny step's shapes ([1024, 128],
// [1024, 96], [1024, 64]), outputs handed back to the free list after each call as in a step: CPU µs per
// call (forward / backward), median of --reps. For A/Bs across trees (one process per variant, alternating; rmsnorm-ab.ts compares the
// row-at-a-time loops within one process).
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/rmsnorm-time.ts [--reps 81] [--tag NAME]
import { parseArgs } from 'node:util';
import { CpuStorage } from '../src/cpu/backend.js';
import { recycleStorage } from '../src/cpu/pool.js';
import { rmsnormKernel } from '../src/cpu/reduce.js';
import { rmsnormBackwardKernel } from '../src/cpu/train-kernels.js';
import { cpu, Rng } from '../src/index.js';

const { values } = parseArgs({
  options: { reps: { type: 'string', default: '81' }, tag: { type: 'string', default: '' } },
});
const rng = new Rng(1);
const tensor = (shape: number[]) => ({
  storage: new CpuStorage(Float32Array.from({ length: shape.reduce((a, b) => a * b) }, () => rng.normal())),
  shape,
  dtype: 'f32' as const,
});
const line: string[] = [];
for (const n of [128, 96, 64]) {
  const [x, w, g] = [tensor([1024, n]), tensor([n]), tensor([1024, n])];
  const [fwd, bwd]: [number[], number[]] = [[], []];
  for (let i = 0; i < Number(values.reps); i++) {
    let c = process.cpuUsage();
    const [y] = rmsnormKernel(cpu, [x, w], { eps: 1e-6 });
    let u = process.cpuUsage(c);
    recycleStorage(y!.storage, 0);
    fwd.push(u.user + u.system);
    c = process.cpuUsage();
    const [dx] = rmsnormBackwardKernel(cpu, [x, w, g], { eps: 1e-6 });
    u = process.cpuUsage(c);
    recycleStorage(dx!.storage, 0);
    bwd.push(u.user + u.system);
  }
  const median = (t: number[]) => [...t].sort((a, b) => a - b)[t.length >> 1];
  line.push(`[1024, ${n}] ${median(fwd)} / ${median(bwd)} µs`);
}
console.log(`${values.tag} ${line.join(', ')} (CPU per call, medians)`);
