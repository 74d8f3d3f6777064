// RMSNorm's CPU kernels (two rows at a time) against the row-at-a-time loops they replaced, alternating
// in one process on the tiny step's shapes ([1024, 128], [1024, 96], [1024, 64], f32); CPU µs per call,
// median of --reps.
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/rmsnorm-ab.ts [--reps 41]
import type { KernelTensor } from '../src/backend.js';
import { CpuStorage } from '../src/cpu/backend.js';
import { recycleStorage } from '../src/cpu/pool.js';
import { rmsnormKernel } from '../src/cpu/reduce.js';
import { rmsnormBackwardKernel } from '../src/cpu/train-kernels.js';
import { cpu, Rng } from '../src/index.js';

const args = process.argv.slice(2);
const reps = Number(args.includes('--reps') ? args[args.indexOf('--reps') + 1] : 41);
const rng = new Rng(1);
const eps = 1e-6;

function forwardLoop(v: Float32Array, wv: Float32Array, n: number, out: Float32Array): void {
  for (let r = 0; r < v.length; r += n) {
    let ss = 0;
    for (let j = 0; j < n; j++) ss += v[r + j]! * v[r + j]!;
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let j = 0; j < n; j++) out[r + j] = v[r + j]! * inv * wv[j]!;
  }
}

function backwardLoop(xv: Float32Array, wv: Float32Array, gv: Float32Array, dx: Float32Array, dw: Float64Array): void {
  const n = wv.length;
  for (let r = 0; r < xv.length; r += n) {
    let ss = 0;
    let dot = 0;
    for (let j = 0; j < n; j++) {
      const xj = xv[r + j]!;
      ss += xj * xj;
      dot += gv[r + j]! * wv[j]! * xj;
    }
    const inv = 1 / Math.sqrt(ss / n + eps);
    const c = inv * inv * inv * (dot / n);
    for (let j = 0; j < n; j++) {
      const xj = xv[r + j]!;
      const gj = gv[r + j]!;
      dx[r + j] = inv * gj * wv[j]! - xj * c;
      dw[j]! += gj * xj * inv;
    }
  }
}

const cpuUs = (): number => {
  const u = process.cpuUsage();
  return u.user + u.system;
};
const median = (xs: number[]) => xs.slice().sort((p, q) => p - q)[xs.length >> 1]!;
const kt = (shape: number[], d: Float32Array): KernelTensor => ({ storage: new CpuStorage(d), shape, dtype: 'f32' });

for (const n of [128, 96, 64, 128]) {
  const size = 1024 * n;
  const x = Float32Array.from({ length: size }, () => rng.normal());
  const w = Float32Array.from({ length: n }, () => 1 + rng.normal() * 0.1);
  const g = Float32Array.from({ length: size }, () => rng.normal());
  const out = new Float32Array(size);
  const dx = new Float32Array(size);
  const t = { fo: [] as number[], fn: [] as number[], bo: [] as number[], bn: [] as number[] };
  for (let r = 0; r < reps; r++) {
    let c = cpuUs();
    forwardLoop(x, w, n, out);
    t.fo.push(cpuUs() - c);
    c = cpuUs();
    const [y] = rmsnormKernel(cpu, [kt([1024, n], x), kt([n], w)], { eps });
    t.fn.push(cpuUs() - c);
    recycleStorage(y!.storage, 0); // outputs from the free list, as in a step
    c = cpuUs();
    backwardLoop(x, w, g, dx, new Float64Array(n));
    t.bo.push(cpuUs() - c);
    c = cpuUs();
    const [d] = rmsnormBackwardKernel(cpu, [kt([1024, n], x), kt([n], w), kt([1024, n], g)], { eps });
    t.bn.push(cpuUs() - c);
    recycleStorage(d!.storage, 0);
  }
  const [fo, fn, bo, bn] = [t.fo, t.fn, t.bo, t.bn].map(median) as [number, number, number, number];
  console.log(
    `[1024, ${n}]: forward ${fo} → ${fn} µs (${(fo / fn).toFixed(2)}x), backward ${bo} → ${bn} µs (${(bo / bn).toFixed(2)}x)`,
  );
}
