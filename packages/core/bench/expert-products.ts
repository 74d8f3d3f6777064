// The tiny step's MoE expert products as the grouped kernels run them: 16 experts, ragged segments
// of 4,096 routed rows, every segment's product one sgemmMany job, operands resident. Forward x·Wᵀ
// (B transposed) against the same n x k with B not transposed (as dX's NN job packs it), so a gap
// between the forward and the backward jobs can be put on the shape or on the transposed packing.
// 1 and 2 threads alternating, medians of µs per job and GFLOP/s.
// usage: npx tsx --conditions=@dsv3/source bench/expert-products.ts [--reps 41] [--threads 1,2] [--only NAME]
import { parseArgs } from 'node:util';
import { allocResident, freeResident, type GemmArgs, setGemmThreads, sgemmMany } from '../src/cpu/gemm/index.js';
import { randomUniform } from '../src/testing.js';

const { values } = parseArgs({
  options: {
    reps: { type: 'string', default: '41' },
    threads: { type: 'string', default: '1,2' },
    // only the jobs whose names contain this (e.g. for callgrind's instruction counts of one job)
    only: { type: 'string', default: '' },
  },
});
const reps = Number(values.reps);
const threadCounts = values.threads.split(',').map(Number);

const E = 16;
// Ragged segments: 4,096 rows (1,024 tokens x top-4), 170-350 each, fixed.
const seg = [256, 170, 350, 233, 301, 198, 277, 214, 262, 189, 322, 241, 205, 290, 228, 360];
const N = seg.reduce((s, x) => s + x, 0);
const off = [0];
for (const s of seg) off.push(off.at(-1)! + s);

const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
const resident = (n: number, seed: number): Float32Array => {
  const a = allocResident('f32', n) as Float32Array;
  a.set(randomUniform(n, seed));
  return a;
};

interface Job {
  name: string;
  /** per expert e: m, n, k */
  shape: (e: number) => [number, number, number];
  transA: boolean;
  transB: boolean;
}
// [n, k] of the expert weights: up/gate 64 x 128, down 128 x 64.
const jobs: Job[] = [];
for (const [w, n, k] of [
  ['up/gate', 64, 128],
  ['down', 128, 64],
] as const) {
  jobs.push({ name: `${w} fwd x·Wᵀ`, shape: (e) => [seg[e]!, n, k], transA: false, transB: true });
  jobs.push({ name: `${w} fwd, B NN`, shape: (e) => [seg[e]!, n, k], transA: false, transB: false });
  jobs.push({ name: `${w} dX g·W`, shape: (e) => [seg[e]!, k, n], transA: false, transB: false });
  jobs.push({ name: `${w} dW gᵀ·x`, shape: (e) => [n, k, seg[e]!], transA: true, transB: false });
}

const picked = jobs.filter((j) => j.name.includes(values.only));
jobs.length = 0;
jobs.push(...picked);
console.log(
  `${E} experts, ${N} rows (${Math.min(...seg)}-${Math.max(...seg)} each); threads: ${threadCounts.join(' | ')}`,
);
// Two passes over the jobs, the first a warm-up (first touch of scratch, the workers' wake-up).
for (const [pass, j] of [...jobs, ...jobs].map((j, i) => [Math.floor(i / jobs.length), j] as const)) {
  const [, n0, k0] = j.shape(0);
  // Operands of the whole job, each expert's segment at its rows (A, C) or its own weight (B).
  const a = resident(j.transA ? N * j.shape(0)[0] : N * k0, 1);
  const wSize = j.transA ? 0 : n0 * k0;
  const ws = Array.from({ length: E }, (_, e) => (j.transA ? null : resident(wSize, 10 + e)));
  const xb = j.transA ? resident(N * n0, 2) : null;
  const c = resident(j.transA ? E * j.shape(0)[0] * n0 : N * n0, 3);
  const list: GemmArgs[] = seg.map((_, e) => {
    const [m, n, k] = j.shape(e);
    return j.transA
      ? { m, n, k, a, aOffset: off[e]! * m, transA: true, b: xb!, bOffset: off[e]! * n, c, cOffset: e * m * n }
      : { m, n, k, a, aOffset: off[e]! * k, b: ws[e]!, transB: j.transB, c, cOffset: off[e]! * n };
  });
  const flops = list.reduce((t, g) => t + 2 * g.m * g.n * g.k, 0);
  const us = threadCounts.map((): number[] => []);
  for (let r = -3; r < reps; r++)
    threadCounts.forEach((t, i) => {
      setGemmThreads(t);
      const t0 = performance.now();
      sgemmMany(list);
      if (r >= 0) us[i]!.push((performance.now() - t0) * 1000);
    });
  const cells = threadCounts.map((_, i) => {
    const u = median(us[i]!);
    return `${u.toFixed(0).padStart(6)} µs ${(flops / u / 1e3).toFixed(1).padStart(5)} GF`;
  });
  if (pass === 0) {
    for (const x of [a, c, xb, ...ws]) if (x) freeResident(x);
    continue;
  }
  const op = `${j.transA ? 'T' : 'N'}${j.transB ? 'T' : 'N'}`;
  console.log(
    `${j.name.padEnd(18)} n ${String(n0).padStart(3)} k ${String(j.shape(0)[2]).padStart(4)} ${op} | ${cells.join(' | ')}`,
  );
  for (const x of [a, c, xb, ...ws]) if (x) freeResident(x);
}
process.exit(0);
