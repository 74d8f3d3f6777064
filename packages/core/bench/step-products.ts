// The tiny training step's dense f32 products (train/bench/gemm-shapes.ts traces them from a step:
// m = 1,024 tokens, k and n 64-320), timed alone with every operand resident in the engine's memory,
// as the step's are, at 1 and 2 threads alternating in one process, against the kernel's large-shape
// rate (1024^3) at the same thread count. Medians of µs per product and GFLOP/s.
// usage: npx tsx --conditions=@dsv3/source bench/step-products.ts [--reps 31] [--threads 1,2]
import { parseArgs } from 'node:util';
import { allocResident, freeResident, setGemmThreads, sgemm, weightProduct } from '../src/cpu/gemm/index.js';
import { randomUniform } from '../src/testing.js';

const { values } = parseArgs({
  options: { reps: { type: 'string', default: '31' }, threads: { type: 'string', default: '1,2' } },
});
const reps = Number(values.reps);
const threadCounts = values.threads.split(',').map(Number);

interface Shape {
  name: string;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  /** forward y = x·Wᵀ through weightProduct (else sgemm) */
  weight: boolean;
  calls: number;
}
const T = 1024;
/** [n, k] of a Linear weight (out, in) and its calls per step: forward, dX = g·W, dW = gᵀ·x each. */
const linears: [string, number, number, number][] = [
  ['dense up/gate', 320, 128, 2],
  ['dense down', 128, 320, 1],
  ['q_b', 192, 96, 3],
  ['kv_b', 256, 64, 3],
  ['o_proj', 128, 128, 3],
  ['q_a', 96, 128, 3],
  ['kv_a', 80, 128, 3],
  ['shared up/gate', 64, 128, 4],
  ['shared down', 128, 64, 2],
  ['lm head', 258, 128, 1],
];
const shapes: Shape[] = [];
for (const [name, n, k, calls] of linears) {
  shapes.push({ name: `${name} fwd`, m: T, n, k, transA: false, transB: true, weight: true, calls });
  shapes.push({ name: `${name} dX`, m: T, n: k, k: n, transA: false, transB: false, weight: false, calls });
  shapes.push({ name: `${name} dW`, m: n, n: k, k: T, transA: true, transB: false, weight: false, calls });
}
shapes.push({ name: 'large 1024^3', m: 1024, n: 1024, k: 1024, transA: false, transB: false, weight: false, calls: 0 });

const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
const resident = (n: number, seed: number): Float32Array => {
  const a = allocResident('f32', n) as Float32Array;
  a.set(randomUniform(n, seed));
  return a;
};

const rows: string[] = [];
const stepUs = new Map<number, number>();
for (const s of shapes) {
  const { m, n, k } = s;
  const a = resident(m * k, 1);
  const b = resident(n * k, 2);
  const c = resident(m * n, 3);
  const run = s.weight
    ? () => weightProduct({ m, n, k, x: a, w: b, y: c })
    : () => sgemm({ m, n, k, a, b, c, transA: s.transA, transB: s.transB });
  const us = threadCounts.map((): number[] => []);
  for (let r = -3; r < reps; r++)
    threadCounts.forEach((t, i) => {
      setGemmThreads(t);
      const t0 = performance.now();
      run();
      if (r >= 0) us[i]!.push((performance.now() - t0) * 1000);
    });
  const cells = threadCounts.map((t, i) => {
    const u = median(us[i]!);
    stepUs.set(t, (stepUs.get(t) ?? 0) + u * s.calls);
    return `${u.toFixed(0).padStart(6)} µs ${((2 * m * n * k) / u / 1e3).toFixed(1).padStart(5)} GF`;
  });
  const op = `${s.transA ? 'T' : 'N'}${s.transB ? 'T' : 'N'}`;
  rows.push(
    `${s.name.padEnd(18)} ${`${m}x${n}x${k}`.padEnd(14)} ${op} ${String(s.calls).padStart(2)} | ${cells.join(' | ')}`,
  );
  for (const x of [a, b, c]) freeResident(x);
}
console.log(`threads: ${threadCounts.join(' | ')}  (median of ${reps}, resident operands)`);
for (const r of rows) console.log(r);
console.log(
  `dense products of a step (x calls): ${threadCounts.map((t) => `${t}t ${((stepUs.get(t) ?? 0) / 1000).toFixed(2)} ms`).join(', ')}`,
);
process.exit(0);
