// Times the current tree's f32 RMSNorm backward kernel on the tiny step's shapes ([1024, 128], [1024, 96],
// [1024, 64]), dx handed back to the free list after each call as in a step: CPU µs per call, median of
// --reps. For A/Bs across trees (one process per variant, alternating; rmsnorm-ab.ts compares the
// row-at-a-time loops within one process).
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/rmsnorm-backward-time.ts [--reps 81] [--tag NAME]
import { parseArgs } from 'node:util';
import { CpuStorage } from '../src/cpu/backend.js';
import { recycleStorage } from '../src/cpu/pool.js';
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
  const times: number[] = [];
  for (let i = 0; i < Number(values.reps); i++) {
    const c = process.cpuUsage();
    const [dx] = rmsnormBackwardKernel(cpu, [x, w, g], { eps: 1e-6 });
    const u = process.cpuUsage(c);
    recycleStorage(dx!.storage, 0);
    times.push(u.user + u.system);
  }
  line.push(`[1024, ${n}] ${[...times].sort((a, b) => a - b)[times.length >> 1]} µs`);
}
console.log(`${values.tag} ${line.join(', ')} (CPU per call, medians)`);
