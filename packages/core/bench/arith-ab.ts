// The step's large f32 elementwise products and sums: the SIMD lanes (arith-simd.ts) against the
// JavaScript loop they replaced (the same expression, one element at a time), alternating in one
// process on the tiny step's shapes, outputs reused (as the free list hands them back); CPU µs per call,
// median of --reps.
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/arith-ab.ts [--reps 51]
import { arithF32, type ArithOp } from '../src/cpu/arith-simd.js';
import { Rng } from '../src/index.js';

const args = process.argv.slice(2);
const reps = Number(args.includes('--reps') ? args[args.indexOf('--reps') + 1] : 51);
const rng = new Rng(1);
const filled = (n: number) => Float32Array.from({ length: n }, () => rng.normal());

function loop(op: ArithOp, a: Float32Array, b: Float32Array, o: Float32Array, n: number): void {
  switch (op) {
    case 'add':
      for (let i = 0; i < n; i++) o[i] = a[i]! + b[i]!;
      return;
    case 'mul':
      for (let i = 0; i < n; i++) o[i] = a[i]! * b[i]!;
      return;
    case 'sub':
      for (let i = 0; i < n; i++) o[i] = a[i]! - b[i]!;
      return;
    case 'div':
      for (let i = 0; i < n; i++) o[i] = a[i]! / b[i]!;
  }
}

const cpuUs = (): number => {
  const u = process.cpuUsage();
  return u.user + u.system;
};
const median = (xs: number[]) => xs.slice().sort((p, q) => p - q)[xs.length >> 1]!;

// [8,128,128] residual adds and gradient sums, [1024,128] MoE sums, [4096,128] the routed rows' sums,
// [8,128,320] the dense MLP's gating product
const CASES: [ArithOp, number][] = [
  ['add', 8 * 128 * 128],
  ['add', 1024 * 128],
  ['add', 4096 * 128],
  ['mul', 8 * 128 * 320],
  ['mul', 1024 * 64],
];
for (const [op, n] of CASES) {
  const a = filled(n);
  const b = filled(n);
  const o = new Float32Array(n);
  const js: number[] = [];
  const simd: number[] = [];
  for (let r = 0; r < reps; r++) {
    let t = cpuUs();
    loop(op, a, b, o, n);
    js.push(cpuUs() - t);
    t = cpuUs();
    arithF32(op, a, 0, 1, b, 0, 1, o, 0, n);
    simd.push(cpuUs() - t);
  }
  const [j, s] = [median(js), median(simd)];
  console.log(`${op} ${n}: loop ${j.toFixed(0)} µs, SIMD ${s.toFixed(0)} µs (${(j / s).toFixed(1)}x)`);
}
