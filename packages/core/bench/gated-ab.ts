// gated-simd.ts's kernels against the JavaScript passes they replaced (vector-exp's e^−x pass, then the
// f64 loop, as @dsv3/moe's swiglu kernels and train-kernels.ts's siluBackward ran them), alternating
// in one process on preallocated outputs; CPU µs per call, median of --reps, and a bitwise check.
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/gated-ab.ts [--reps 41] [--n 262144]
import { parseArgs } from 'node:util';
import { siluBackwardF32, swigluBackwardF32, swigluF32 } from '../src/cpu/gated-simd.js';
import { expF32 } from '../src/cpu/vector-exp.js';
import { Rng } from '../src/index.js';

const { values } = parseArgs({
  options: { reps: { type: 'string', default: '41' }, n: { type: 'string', default: '262144' } },
});
const n = Number(values.n);
const rng = new Rng(1);
const r = () => Float32Array.from({ length: n }, () => rng.normal());
const [g, u, d] = [r(), r(), r()];
const [o1, o2, p1, p2] = [0, 1, 2, 3].map(() => new Float32Array(n)) as [
  Float32Array,
  Float32Array,
  Float32Array,
  Float32Array,
];

const old = {
  swiglu() {
    expF32(g, 0, o1, 0, n, -1);
    for (let i = 0; i < n; i++) o1[i] = (g[i]! / (1 + o1[i]!)) * u[i]!;
  },
  swigluBackward() {
    expF32(g, 0, o1, 0, n, -1);
    for (let i = 0; i < n; i++) {
      const x = g[i]!;
      const s = 1 / (1 + o1[i]!);
      o1[i] = d[i]! * u[i]! * s * (1 + x * (1 - s));
      o2[i] = d[i]! * x * s;
    }
  },
  siluBackward() {
    expF32(g, 0, o1, 0, n, -1);
    for (let i = 0; i < n; i++) {
      const s = 1 / (1 + o1[i]!);
      o1[i] = d[i]! * s * (1 + g[i]! * (1 - s));
    }
  },
};
const simd = {
  swiglu: () => swigluF32(g, u, p1),
  swigluBackward: () => swigluBackwardF32(d, g, u, p1, p2),
  siluBackward: () => siluBackwardF32(g, d, p1),
};
const cpuUs = (fn: () => unknown) => {
  const c = process.cpuUsage();
  fn();
  const t = process.cpuUsage(c);
  return t.user + t.system;
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
for (const k of ['swiglu', 'swigluBackward', 'siluBackward'] as const) {
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < Number(values.reps); i++) {
    a.push(cpuUs(old[k]));
    b.push(cpuUs(simd[k]));
  }
  for (const [x, y] of [
    [o1, p1],
    [o2, p2],
  ] as const)
    if (x.some((v, i) => !Object.is(v, y[i]))) throw new Error(`${k}: outputs differ`);
  console.log(`${k} (${n}): old ${median(a)} µs, new ${median(b)} µs (CPU per call, medians)`);
}
