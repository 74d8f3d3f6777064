// f32 weight products past the GEMV, the two routes on the same operands, alternating in one process:
// the f32 GEMM (`sgemm` with B transposed: pack tasks, then row stripes) against the weight GEMM
// (`weightProduct` with gemmConfig.f32WeightGemmMaxRows lifted, so every shape takes it: one job of
// column ranges packing their own panels, panel by panel while A~ for all of k fits a thread's workspace,
// else in blocks). Medians of ms per product; bitwise check.
// usage: npx tsx --conditions=@dsv3/source bench/f32-weight-route-ab.ts [--threads 2] [--reps 9]
import { parseArgs } from 'node:util';
import { allocResident, freeResident, setGemmThreads, sgemm, weightProduct } from '../src/cpu/gemm/index.js';
import { randomUniform } from '../src/testing.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';

const { values } = parseArgs({
  options: { threads: { type: 'string', default: '2' }, reps: { type: 'string', default: '9' } },
});
setGemmThreads(Number(values.threads));
gemmConfig.f32WeightGemmMaxRows = Number.POSITIVE_INFINITY;
const reps = Number(values.reps);
/** m x n x k: V3-mini prefill shapes (an expert, q_a, dense gate / down) and training-sized row counts. */
const shapes: [number, number, number][] = [
  [12, 256, 1024],
  [128, 384, 1024],
  [128, 2816, 1024],
  [128, 1024, 2816],
  [256, 1024, 1024],
  [512, 1024, 1024],
  [192, 1024, 2816],
  [512, 1024, 2816],
  [1024, 1024, 2816],
  [2048, 2816, 1024],
  [4096, 1024, 1024],
  [1024, 256, 1024],
];
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
for (const [m, n, k] of shapes) {
  const w = allocResident('f32', n * k) as Float32Array;
  w.set(randomUniform(n * k, 1));
  const x = Float32Array.from(randomUniform(m * k, 2));
  const [a, b] = [new Float32Array(m * n), new Float32Array(m * n)];
  const ms: [number[], number[]] = [[], []];
  for (let r = -2; r < reps; r++) {
    let t = performance.now();
    sgemm({ m, n, k, a: x, b: w, transB: true, c: a });
    const t0 = performance.now() - t;
    t = performance.now();
    weightProduct({ m, n, k, x, w, y: b });
    const t1 = performance.now() - t;
    if (r >= 0) {
      ms[0].push(t0);
      ms[1].push(t1);
    }
  }
  const same = a.every((v, i) => Object.is(v, b[i]));
  const [g, wg] = [median(ms[0]), median(ms[1])];
  console.log(
    `${`${m}x${n}x${k}`.padEnd(14)} f32 GEMM ${g.toFixed(2)} ms  weight GEMM ${wg.toFixed(2)} ms  (${(g / wg).toFixed(2)}x)  ${same ? 'bitwise equal' : 'OUTPUTS DIFFER'}`,
  );
  freeResident(w);
}
