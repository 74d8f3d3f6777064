// Streaming bandwidth of the resident-weight GEMV kernels (decode's weight products) against a plain
// memory copy measured in the same run, interleaved: the fraction of the copy bandwidth each reaches.
// usage: npx tsx --conditions=@dsv3/source bench/gemv.ts [--n 32768] [--k 1024] [--m 1] [--threads 1] [--reps 5]
import { allocResident, freeResident } from '../src/cpu/gemm/index.js';
import { setGemmThreads, weightProduct } from '../src/cpu/index.js';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '32768' },
    k: { type: 'string', default: '1024' },
    m: { type: 'string', default: '1' },
    threads: { type: 'string', default: '1' },
    reps: { type: 'string', default: '5' },
  },
});
const n = Number(values.n),
  k = Number(values.k),
  m = Number(values.m),
  reps = Number(values.reps);
setGemmThreads(Number(values.threads));

const x = Float32Array.from({ length: m * k }, (_, i) => Math.sin(i));
const y = new Float32Array(m * n);
const kinds = [
  { kind: 'f32', dtype: 'f32', bytes: 4 },
  { kind: 'bf16', dtype: 'bf16', bytes: 2 },
  { kind: 'fp8', dtype: 'fp8-e4m3', bytes: 1 },
] as const;
const weights = kinds.map(({ dtype }) => {
  const w = allocResident(dtype, n * k);
  if (!w) throw new Error('no room for the resident weight');
  for (let i = 0; i < w.length; i++)
    w[i] = dtype === 'f32' ? Math.cos(i) : dtype === 'bf16' ? 0x3f80 + (i & 63) : 0x30 + (i & 15);
  return w;
});
const scales = new Float32Array(Math.ceil(n / 128) * Math.ceil(k / 128)).fill(0.01);

// Copy anchor: read + write of as many bytes as the f32 weight.
const src = new Float32Array(n * k).fill(1),
  dst = new Float32Array(n * k);
const time = (f: () => void): number => {
  const t = performance.now();
  f();
  return (performance.now() - t) / 1000;
};
const best: Record<string, number> = {};
for (let r = 0; r < reps; r++) {
  const c = time(() => dst.set(src));
  best.copy = Math.max(best.copy ?? 0, (2 * n * k * 4) / c);
  kinds.forEach(({ kind, bytes }, i) => {
    const w = weights[i]!;
    const s = time(() => weightProduct({ m, n, k, x, w: w as Float32Array, ...(kind === 'fp8' && { scales }), y }));
    best[kind] = Math.max(best[kind] ?? 0, (n * k * bytes) / s);
  });
}
const gb = (v: number): string => (v / 1e9).toFixed(1);
console.log(`GEMV m=${m} n=${n} k=${k} threads=${values.threads}; copy (read+write) ${gb(best.copy!)} GB/s`);
for (const { kind } of kinds)
  console.log(
    `  ${kind.padEnd(4)} weight stream ${gb(best[kind]!)} GB/s = ${(best[kind]! / best.copy!).toFixed(2)} of copy`,
  );
for (const w of weights) freeResident(w);
