// Every matrix product of one CPU training step of a preset (the step bench/run.ts times), by shape,
// timed alone on dsv3's GEMM and on torch.matmul (same shapes, same thread count, alternating rounds in
// one run): which products lose against torch, and by how much.
//   npx tsx --conditions=@dsv3/source bench/gemm-shapes.ts [tiny|mini] [--threads 2] [--rounds 2]
//     [--seconds 0.15] [--python PY]
// Listed: the products core's sgemm and weightProduct are asked for (the dense layers and their
// gradients, the MoE's grouped products per expert); the training attention's own products are not.
// The experts' products (rows ragged, one call per expert) are grouped by their other dimensions and
// timed at the group's median rows; the group's time per step is that times its calls, scaled by
// its total rows over calls x median rows.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Rng, setGemmThreads, sgemm, weightProduct } from '@dsv3/core';
import { gemmConfig, type TracedProduct } from '../../core/src/cpu/gemm/config.js';
import type { TrainPreset } from '../src/index.js';
import { benchStep } from './bench-step.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const preset = (args.find((a) => a === 'tiny' || a === 'mini') ?? 'tiny') as TrainPreset;
const threads = Number(flag('--threads', '2'));
const rounds = Number(flag('--rounds', '2'));
const seconds = Number(flag('--seconds', '0.1'));
const python = flag('--python', process.env.DSV3_PYTHON ?? '/work/venv/bin/python');
setGemmThreads(threads);

interface Shape {
  entry: TracedProduct['entry'];
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  calls: number;
  resident: string;
  /** rows of every call (ragged groups) */
  rows: number[];
}

/** The dimension that counts token rows: k for a weight gradient (Aᵀ·B), else m. */
const rowDim = (p: { transA: boolean; transB: boolean }): 'm' | 'k' => (p.transA && !p.transB ? 'k' : 'm');
// Products of the step's full row count keep their own line; others (the experts') group by the rest.
const key = (p: TracedProduct) =>
  `${p.entry} ${rowDim(p) === 'm' && p.m !== fullRows ? 'e' : p.m}x${p.n}x${rowDim(p) === 'k' && p.k !== fullRows ? 'e' : p.k} ${p.transA ? 'T' : 'N'}${p.transB ? 'T' : 'N'} b${p.batch} ${p.resident.a ? 'a' : ''}${p.resident.b ? 'b' : ''}${p.resident.c ? 'c' : ''}`;

const fullRows = preset === 'tiny' ? 8 * 128 : 2 * 256;
// Trace the third step (the first two warm the caches, the free list and the workers).
const { step } = benchStep(preset);
await step();
await step();
const shapes = new Map<string, Shape>();
gemmConfig.trace = (p) => {
  if (p.batch !== 1)
    throw new Error(`gemm-shapes: a batched product (${key(p)}) — time it per item or extend the bench`);
  const s = shapes.get(key(p));
  if (s) {
    s.calls++;
    s.rows.push(p[rowDim(p)]);
  } else {
    const resident = `${p.resident.a ? 'a' : ''}${p.resident.b ? 'b' : ''}${p.resident.c ? 'c' : ''}`;
    shapes.set(key(p), { ...p, calls: 1, resident, rows: [p[rowDim(p)]] });
  }
};
await step();
gemmConfig.trace = null;
const median = (xs: number[]) => {
  const s = [...xs].sort((p, q) => p - q);
  return s[s.length >> 1]!;
};
for (const s of shapes.values()) s[rowDim(s)] = median(s.rows);
/** Time per step of a group = time of one median-rows call x this. */
const weight = (s: Shape) => s.rows.reduce((a, b) => a + b, 0) / s[rowDim(s)];
const list = [...shapes.values()].sort((a, b) => weight(b) * b.m * b.n * b.k - weight(a) * a.m * a.n * a.k);

/** Median seconds of one product of this shape on dsv3's GEMM (host operands, as the step's are). */
function timeOurs(s: Shape): number {
  const rng = new Rng(s.m * 7 + s.n * 3 + s.k);
  const a = new Float32Array(s.m * s.k),
    b = new Float32Array(s.k * s.n),
    c = new Float32Array(s.m * s.n);
  rng.fillUniform(a, -1, 1);
  rng.fillUniform(b, -1, 1);
  const run =
    s.entry === 'weightProduct'
      ? () => weightProduct({ m: s.m, n: s.n, k: s.k, x: a, w: b, y: c })
      : () => sgemm({ m: s.m, n: s.n, k: s.k, a, b, c, transA: s.transA, transB: s.transB });
  for (let i = 0; i < 3; i++) run();
  const times: number[] = [];
  const t0 = performance.now();
  while (times.length < 5 || performance.now() - t0 < seconds * 1000) {
    const t = performance.now();
    run();
    times.push((performance.now() - t) / 1000);
  }
  return median(times);
}

function timeTorch(): number[] {
  const script = fileURLToPath(new URL('./torch_gemm_shapes.py', import.meta.url));
  const spec = JSON.stringify({
    threads,
    seconds,
    shapes: list.map(({ m, n, k, transA, transB }) => ({ m, n, k, transA, transB })),
  });
  const r = spawnSync(python, [script], { input: spec, encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`torch_gemm_shapes.py failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout) as number[];
}

const ours: number[][] = list.map(() => []);
const torch: number[][] = list.map(() => []);
for (let r = 0; r < rounds; r++) {
  list.forEach((s, i) => ours[i]!.push(timeOurs(s)));
  timeTorch().forEach((t, i) => torch[i]!.push(t));
}

const gflops = (s: Shape, sec: number) => (2 * s.m * s.n * s.k) / sec / 1e9;
console.log(
  `${preset} step, ${threads} thread(s): every GEMM of one step by shape (median of ${rounds} alternating rounds)`,
);
console.log('(~: an expert group, timed at its median rows, m or k of a weight gradient; calls: products per step)');
console.log(
  'entry          m x n x k      op  resident calls | dsv3 µs  GFLOP/s | torch µs GFLOP/s | dsv3/torch | ms/step dsv3 torch',
);
let sumOurs = 0,
  sumTorch = 0;
list.forEach((s, i) => {
  const o = median(ours[i]!),
    t = median(torch[i]!);
  const w = weight(s);
  sumOurs += o * w;
  sumTorch += t * w;
  console.log(
    `${s.entry.padEnd(14)} ${`${s.rows.some((r) => r !== s.rows[0]) ? '~' : ''}${s.m}x${s.n}x${s.k}`.padEnd(14)} ${s.transA ? 'T' : 'N'}${s.transB ? 'T' : 'N'}  ${s.resident.padEnd(8)} ${String(s.calls).padStart(5)} | ${(o * 1e6).toFixed(0).padStart(7)} ${gflops(s, o).toFixed(1).padStart(8)} | ${(t * 1e6).toFixed(0).padStart(8)} ${gflops(s, t).toFixed(1).padStart(7)} | ${(t / o).toFixed(2).padStart(9)}x | ${(o * w * 1e3).toFixed(2).padStart(7)} ${(t * w * 1e3).toFixed(2).padStart(5)}`,
  );
});
console.log(
  `all ${list.reduce((n, s) => n + s.calls, 0)} products: dsv3 ${(sumOurs * 1e3).toFixed(1)} ms, torch ${(sumTorch * 1e3).toFixed(1)} ms per step (each timed alone) — ${(sumTorch / sumOurs).toFixed(2)}x`,
);
process.exit(0);
