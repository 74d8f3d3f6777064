// The optimizer's part of a training step over the tiny preset's parameter count (1,251,168 f32 weights
// in tensors of 6K–49K elements plus 94 small ones, as adamw-ab.ts): old = per-parameter sumSquares,
// clipping's scaleInPlace and adamwInPlace on the calling thread; new = sumSquaresMany and adamwMany as
// jobs of the GEMM engine's threads over resident weights and moments, with host gradients (staged) or
// resident ones (--resident-grads). Alternating in one process; wall and CPU ms per optimizer step, medians.
//   npx tsx --conditions=@dsv3/source bench/optimizer-step-ab.ts [--reps 31] [--threads 2] [--bf16] [--resident-grads]
import type { KernelTensor } from '../src/backend.js';
import { cpu, CpuStorage } from '../src/cpu/backend.js';
import {
  adamwInPlaceKernel,
  adamwManyKernel,
  scaleInPlaceKernel,
  sumSquaresKernel,
  sumSquaresManyKernel,
  toResidentKernel,
} from '../src/cpu/train-kernels.js';
import { encodeBf16, Rng, setGemmThreads } from '../src/index.js';
import { tinyAdamWAttrs, tinyTensorSizes } from './tiny-optimizer-shapes.js';

const args = process.argv.slice(2);
const opt = (name: string, d: number) => Number(args.includes(name) ? args[args.indexOf(name) + 1] : d);
const reps = opt('--reps', 31);
setGemmThreads(opt('--threads', 2));
const bf16 = args.includes('--bf16');
const residentGrads = args.includes('--resident-grads');
const sizes = tinyTensorSizes(94); // 94 norms' gains and gate biases
const rng = new Rng(1);
const filled = (n: number, scale: number) => Float32Array.from({ length: n }, () => rng.normal() * scale);
const kt = (a: Float32Array | Uint16Array): KernelTensor => ({
  storage: new CpuStorage(a),
  shape: [a.length],
  dtype: a instanceof Uint16Array ? 'bf16' : 'f32',
});
const moment = (a: Float32Array) => kt(bf16 ? (encodeBf16(a) as Uint16Array) : a);
const resident = (t: KernelTensor) => toResidentKernel(cpu, [t])[0]!;
const attrs = tinyAdamWAttrs(bf16 ? 'bf16' : 'f32');
// old: host state; new: resident state (one copy of the same values each)
const old = sizes.map((n) => [
  kt(filled(n, 0.5)),
  kt(filled(n, 1e-2)),
  moment(filled(n, 1e-3)),
  moment(filled(n, 1e-3).map(Math.abs)),
]);
const fresh = old.map(([w, g, m, v]) => [resident(w!), residentGrads ? resident(g!) : g!, resident(m!), resident(v!)]);

const one = () => kt(Float32Array.of(1));
/** Each variant's parts, timed: the norm's sums of squares, clipping's pass (old only), AdamW. */
const variants = {
  old: {
    norm: () => {
      for (const [, g] of old) sumSquaresKernel(cpu, [g!]);
    },
    scale: () => {
      for (const [, g] of old) scaleInPlaceKernel(cpu, [g!, one()]);
    },
    adamw: () => {
      for (const s of old) adamwInPlaceKernel(cpu, s, attrs);
    },
  },
  new: {
    norm: () => {
      sumSquaresManyKernel(
        cpu,
        fresh.map((s) => s[1]!),
      );
    },
    adamw: () => {
      adamwManyKernel(cpu, [one(), ...fresh.flat()], attrs);
    },
  },
} as const;

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const med = (a: number[]) => a.slice().sort((x, y) => x - y)[a.length >> 1]!;
const times: Record<string, number[]> = {};
const record = (key: string, ms: number) => {
  times[key] ??= [];
  times[key].push(ms);
};
for (let r = 0; r < reps + 3; r++) {
  for (const [name, parts] of Object.entries(variants)) {
    const c0 = cpuMs();
    const t0 = performance.now();
    for (const [part, f] of Object.entries(parts)) {
      const p0 = performance.now();
      f();
      if (r >= 3) record(`${name} ${part}`, performance.now() - p0);
    }
    if (r >= 3) {
      record(`${name} wall`, performance.now() - t0);
      record(`${name} CPU`, cpuMs() - c0);
    }
  }
}
console.log(
  `${sizes.length} tensors, ${bf16 ? 'bf16' : 'f32'} moments, grads ${residentGrads ? 'resident' : 'host'}, ${opt('--threads', 2)} threads, median of ${reps}`,
);
for (const [key, t] of Object.entries(times)) console.log(`${key}: ${med(t).toFixed(2)} ms`);
console.log(`old / new wall: ${(med(times['old wall']!) / med(times['new wall']!)).toFixed(3)}x`);
