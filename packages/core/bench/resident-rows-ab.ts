// The resident elementwise and RMSNorm jobs (arith-simd.ts, rmsnorm-simd.ts) on 1 thread and split over
// 2 (task and wake sizes lowered so every size splits), the worker asleep (a 3 ms pause before each call, past
// gemmConfig.spinMicros, as between a step's kernels) and awake (the same call just before), and the
// staged path on host copies, alternating in one process; µs per call, medians of --reps. Sizes: the
// tiny step's ([1024, 128]-ish) to a 512-token prefill's hidden rows ([512, 1024]).
// --base DIR: a column for DIR's rmsnorm-simd.ts (an older tree's packages/core) on the same resident
// operands, which it stages through its own memory.
// usage: npx tsx --conditions=@dsv3/source bench/resident-rows-ab.ts [--reps 41] [--base DIR] [--only rmsnorm]
import { parseArgs } from 'node:util';
import { ARITH_SPLIT, arithF32 } from '../src/cpu/arith-simd.js';
import { allocResident, setGemmThreads } from '../src/cpu/gemm/index.js';
import { RMSNORM_SPLIT, rmsnormBackwardSimd, rmsnormSimd } from '../src/cpu/rmsnorm-simd.js';
import { randomUniform } from '../src/testing.js';

const { values } = parseArgs({
  options: { reps: { type: 'string', default: '41' }, base: { type: 'string' }, only: { type: 'string' } },
});
const reps = Number(values.reps);
type Norms = { rmsnormSimd: typeof rmsnormSimd; rmsnormBackwardSimd: typeof rmsnormBackwardSimd };
const base: Norms | null = values.base ? await import(`${values.base}/src/cpu/rmsnorm-simd.ts`) : null;
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
const nap = new Int32Array(new SharedArrayBuffer(4));
const resident = (h: Float32Array): Float32Array => {
  const a = allocResident('f32', h.length) as Float32Array;
  a.set(h);
  return a;
};
const [savedArith, savedNorm] = [{ ...ARITH_SPLIT }, { ...RMSNORM_SPLIT }];

const rowsOf: [number, number][] = [
  [256, 128],
  [1024, 128],
  [1024, 320],
  [512, 1024],
  [2048, 1024],
];
console.log(
  `case | size (floats) | staged host | 1 thread | 2 asleep | 2 awake${base ? ' | base, resident' : ''}  (µs, medians)`,
);
for (const [rows, n] of rowsOf) {
  const size = rows * n;
  const [hx, hg, hw] = [randomUniform(size, 1), randomUniform(size, 2), randomUniform(n, 3)].map((a) =>
    Float32Array.from(a),
  ) as [Float32Array, Float32Array, Float32Array];
  const [x, g, w, o] = [resident(hx), resident(hg), resident(hw), resident(new Float32Array(size))];
  const ho = new Float32Array(size);
  const dw = new Float64Array(n);
  const norms = (host: boolean | 'base'): Norms => (host === 'base' ? base! : { rmsnormSimd, rmsnormBackwardSimd });
  const cases: [string, (host: boolean | 'base') => void][] = [
    ['add (o = a + b)', (host) => arithF32('add', host ? hx : x, 0, 1, host ? hg : g, 0, 1, host ? ho : o, 0, size)],
    [
      'add in place (a += b)',
      (host) => arithF32('add', host ? ho : o, 0, 1, host ? hg : g, 0, 1, host ? ho : o, 0, size),
    ],
    [
      'rmsnorm',
      (host) => norms(host).rmsnormSimd(host === true ? hx : x, host === true ? hw : w, 1e-6, host === true ? ho : o),
    ],
    [
      'rmsnorm backward',
      (host) =>
        norms(host).rmsnormBackwardSimd(
          host === true ? hx : x,
          host === true ? hw : w,
          host === true ? hg : g,
          1e-6,
          host === true ? ho : o,
          dw,
        ),
    ],
  ];
  for (const [name, run] of cases) {
    if (values.only && !name.startsWith(values.only)) continue;
    const modes: string[] = ['staged', '1', 'asleep', 'awake', ...(base && name.startsWith('rmsnorm') ? ['base'] : [])];
    const us = modes.map((): number[] => []);
    for (let r = 0; r < reps; r++)
      modes.forEach((mode, i) => {
        const one = mode !== 'asleep' && mode !== 'awake';
        setGemmThreads(one ? 1 : 2);
        Object.assign(ARITH_SPLIT, one ? savedArith : { taskVectors: 1, wakeVectors: 0 });
        Object.assign(RMSNORM_SPLIT, one ? savedNorm : { taskFloats: 1, wakeFloats: 0 });
        if (mode === 'asleep') Atomics.wait(nap, 0, 0, 3);
        if (mode === 'awake') run(false);
        const t = performance.now();
        run(mode === 'base' ? 'base' : mode === 'staged');
        us[i]!.push((performance.now() - t) * 1000);
      });
    console.log(`${name} | [${rows}, ${n}] ${size} | ${us.map((u) => median(u).toFixed(1)).join(' | ')}`);
  }
}
