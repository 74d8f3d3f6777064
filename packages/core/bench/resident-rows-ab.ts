// The resident elementwise and RMSNorm jobs (arith-simd.ts, rmsnorm-simd.ts) on 1 thread and split over
// 2 (task sizes lowered so every size splits), the worker asleep (a 3 ms pause before each call, past
// gemmConfig.spinMicros, as between a step's kernels) and awake (the same call just before), and the
// staged path on host copies, alternating in one process; µs per call, medians of --reps. Sizes: the
// tiny step's ([1024, 128]-ish) to a 512-token prefill's hidden rows ([512, 1024]).
// usage: npx tsx --conditions=@dsv3/source bench/resident-rows-ab.ts [--reps 41]
import { parseArgs } from 'node:util';
import { ARITH_TASK_VECTORS, arithF32 } from '../src/cpu/arith-simd.js';
import { allocResident, setGemmThreads } from '../src/cpu/gemm/index.js';
import { RMSNORM_TASK_FLOATS, rmsnormBackwardSimd, rmsnormSimd } from '../src/cpu/rmsnorm-simd.js';
import { randomUniform } from '../src/testing.js';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '41' } } });
const reps = Number(values.reps);
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
const nap = new Int32Array(new SharedArrayBuffer(4));
const resident = (h: Float32Array): Float32Array => {
  const a = allocResident('f32', h.length) as Float32Array;
  a.set(h);
  return a;
};
const [savedArith, savedNorm] = [ARITH_TASK_VECTORS.value, RMSNORM_TASK_FLOATS.value];

const rowsOf: [number, number][] = [
  [256, 128],
  [1024, 128],
  [1024, 320],
  [512, 1024],
  [2048, 1024],
];
console.log('case | size (floats) | staged host | 1 thread | 2 asleep | 2 awake  (µs, medians)');
for (const [rows, n] of rowsOf) {
  const size = rows * n;
  const [hx, hg, hw] = [randomUniform(size, 1), randomUniform(size, 2), randomUniform(n, 3)].map((a) =>
    Float32Array.from(a),
  ) as [Float32Array, Float32Array, Float32Array];
  const [x, g, w, o] = [resident(hx), resident(hg), resident(hw), resident(new Float32Array(size))];
  const ho = new Float32Array(size);
  const dw = new Float64Array(n);
  const cases: [string, (host: boolean) => void][] = [
    ['add (o = a + b)', (host) => arithF32('add', host ? hx : x, 0, 1, host ? hg : g, 0, 1, host ? ho : o, 0, size)],
    [
      'add in place (a += b)',
      (host) => arithF32('add', host ? ho : o, 0, 1, host ? hg : g, 0, 1, host ? ho : o, 0, size),
    ],
    ['rmsnorm', (host) => rmsnormSimd(host ? hx : x, host ? hw : w, 1e-6, host ? ho : o)],
    [
      'rmsnorm backward',
      (host) => rmsnormBackwardSimd(host ? hx : x, host ? hw : w, host ? hg : g, 1e-6, host ? ho : o, dw),
    ],
  ];
  for (const [name, run] of cases) {
    const modes = ['staged', '1', 'asleep', 'awake'] as const;
    const us = modes.map((): number[] => []);
    for (let r = 0; r < reps; r++)
      modes.forEach((mode, i) => {
        setGemmThreads(mode === '1' || mode === 'staged' ? 1 : 2);
        ARITH_TASK_VECTORS.value = mode === '1' || mode === 'staged' ? savedArith : 1;
        RMSNORM_TASK_FLOATS.value = mode === '1' || mode === 'staged' ? savedNorm : 1;
        if (mode === 'asleep') Atomics.wait(nap, 0, 0, 3);
        if (mode === 'awake') run(false);
        const t = performance.now();
        run(mode === 'staged');
        us[i]!.push((performance.now() - t) * 1000);
      });
    console.log(`${name} | [${rows}, ${n}] ${size} | ${us.map((u) => median(u).toFixed(1)).join(' | ')}`);
  }
}
