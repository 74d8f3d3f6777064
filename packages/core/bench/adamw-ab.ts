// AdamW's in-place f32 update: the fused kernel (f64x2 SIMD pairs) against the scalar loop it replaced
// (the same expressions, one element at a time), alternating in one process over 1,251,168 weights (the
// tiny preset's count) in 43 tensors of 6K–49K elements; CPU ms per full update, median of --reps.
// `--bf16`: moments in bf16 (the trainer's default): the kernel's SIMD pairs with the moments staged
// through f32 against its scalar loop's chunks (decode, update, encode).
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/adamw-ab.ts [--reps 31] [--bf16]
import type { KernelTensor } from '../src/backend.js';
import { CpuStorage } from '../src/cpu/backend.js';
import { adamwInPlaceKernel } from '../src/cpu/train-kernels.js';
import type { AdamWKernelAttrs } from '../src/optim/adamw.js';
import { cpu, decodeBf16, encodeBf16, Rng } from '../src/index.js';
import { tinyAdamWAttrs, tinyTensorSizes } from './tiny-optimizer-shapes.js';

const args = process.argv.slice(2);
const reps = Number(args.includes('--reps') ? args[args.indexOf('--reps') + 1] : 31);
const sizes = tinyTensorSizes();
const rng = new Rng(1);
const filled = (n: number, scale: number) => Float32Array.from({ length: n }, () => rng.normal() * scale);
const sets = sizes.map((n) => [filled(n, 0.5), filled(n, 1e-2), filled(n, 1e-3), filled(n, 1e-3).map(Math.abs)]);
const bf16 = args.includes('--bf16');
const attrs = tinyAdamWAttrs(bf16 ? 'bf16' : 'f32');
const kt = (a: Float32Array | Uint16Array): KernelTensor => ({
  storage: new CpuStorage(a),
  shape: [a.length],
  dtype: a instanceof Uint16Array ? 'bf16' : 'f32',
});
// bf16: the moments' bits, one copy for each side
const bits = (a: Float32Array) => encodeBf16(a) as Uint16Array<ArrayBuffer>;
const bf16Sets = sets.map(([w, g, m, v]) => [w!, g!, bits(m!), bits(v!)] as const);
const kernelSets = bf16
  ? sets.map(([w, g, m, v]) => [kt(w!.slice()), kt(g!), kt(bits(m!)), kt(bits(v!))])
  : sets.map((s) => s.map(kt));
const scratch = { m: new Float32Array(4096), v: new Float32Array(4096) };

/** The kernel's scalar loop with bf16 moments: 4,096 elements at a time decoded, updated, encoded. */
function scalarBf16(
  w: Float32Array,
  g: Float32Array,
  mb: Uint16Array<ArrayBuffer>,
  vb: Uint16Array<ArrayBuffer>,
  a: AdamWKernelAttrs,
) {
  for (let s = 0; s < w.length; s += 4096) {
    const e = Math.min(w.length, s + 4096);
    const m = decodeBf16(mb.subarray(s, e), scratch.m.subarray(0, e - s));
    const v = decodeBf16(vb.subarray(s, e), scratch.v.subarray(0, e - s));
    scalar(w.subarray(s, e), g.subarray(s, e), m, v, a);
    encodeBf16(m, mb.subarray(s, e));
    encodeBf16(v, vb.subarray(s, e));
  }
}

function scalar(w: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, a: AdamWKernelAttrs) {
  const { b1, b2, eps, c1, c2, lr, decay } = a;
  for (let i = 0; i < w.length; i++) {
    const gi = g[i]!;
    const mi = b1 * m[i]! + (1 - b1) * gi;
    const vi = b2 * v[i]! + (1 - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = w[i]! * decay - (lr * (mi / c1)) / (Math.sqrt(vi / c2) + eps);
  }
}
const cpuMs = (f: () => void) => {
  const c0 = process.cpuUsage();
  f();
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / 1000;
};
const times = { scalar: [] as number[], simd: [] as number[] };
for (let r = 0; r < reps + 3; r++) {
  const s = cpuMs(() => {
    if (bf16) for (const [w, g, m, v] of bf16Sets) scalarBf16(w, g, m, v, attrs);
    else for (const [w, g, m, v] of sets) scalar(w!, g!, m!, v!, attrs);
  });
  const k = cpuMs(() => {
    for (const t of kernelSets) adamwInPlaceKernel(cpu, t, attrs);
  });
  if (r >= 3) {
    times.scalar.push(s);
    times.simd.push(k);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
console.log(
  `AdamW f32 in place, ${bf16 ? 'bf16' : 'f32'} moments, ${sizes.length} tensors: scalar ${median(times.scalar).toFixed(2)} ms, kernel (SIMD pairs) ${median(times.simd).toFixed(2)} ms of CPU per update (median of ${reps}); ${(median(times.scalar) / median(times.simd)).toFixed(2)}x`,
);
