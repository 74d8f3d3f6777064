// Decode's weight products on a model's real shapes, weight kinds interleaved (default bf16 against
// FP8; --kinds f32,bf16 for the products a model keeps f32): for each shape enough copies of the
// weight to stream from memory (over --mib MiB per kind, cycled, as a decode step meets them), timed
// per product (copies sized by the widest kind); prints each kind's weights/s and its time over the first kind's.
// usage: npx tsx --conditions=@dsv3/source bench/gemv-shapes.ts [--shapes 256x1024,1024x256,...]
//        [--kinds bf16,fp8] [--threads 1] [--reps 7] [--mib 256] [--m 1]
import { parseArgs } from 'node:util';
import { allocResident, freeResident } from '../src/cpu/gemm/index.js';
import { setGemmThreads, weightProduct } from '../src/cpu/index.js';

const { values } = parseArgs({
  options: {
    // V3-mini: expert gate/up, expert down, dense gate/up, dense down, q_a, q_b, kv_a, LM head
    shapes: { type: 'string', default: '256x1024,1024x256,2816x1024,1024x2816,384x1024,768x384,288x1024,129280x1024' },
    kinds: { type: 'string', default: 'bf16,fp8' },
    threads: { type: 'string', default: '1' },
    reps: { type: 'string', default: '7' },
    mib: { type: 'string', default: '256' },
    m: { type: 'string', default: '1' },
  },
});
setGemmThreads(Number(values.threads));
const m = Number(values.m),
  reps = Number(values.reps);
const time = (f: () => void): number => {
  const t = performance.now();
  f();
  return performance.now() - t;
};
console.log(`m=${m} threads=${values.threads}: best of ${reps} passes over each shape's copies`);
for (const shape of values.shapes.split(',')) {
  const [n, k] = shape.split('x').map(Number) as [number, number];
  const x = Float32Array.from({ length: m * k }, (_, i) => Math.sin(i));
  const y = new Float32Array(m * n);
  const scales = new Float32Array(Math.ceil(n / 128) * Math.ceil(k / 128)).fill(0.01);
  const all = {
    f32: { dtype: 'f32', fill: (i: number) => 1 + (i & 63) / 64 },
    bf16: { dtype: 'bf16', fill: (i: number) => 0x3f80 + (i & 63) },
    fp8: { dtype: 'fp8-e4m3', fill: (i: number) => 0x30 + (i & 15) },
  } as const;
  const kinds = values.kinds.split(',').map((name) => {
    if (!(name in all)) throw new Error(`gemv-shapes: --kinds takes f32, bf16, fp8; got "${name}"`);
    return { name, ...all[name as keyof typeof all] };
  });
  const bytes = { f32: 4, bf16: 2, fp8: 1 } as const;
  const copies = Math.max(
    1,
    Math.ceil(
      (Number(values.mib) << 20) / (n * k * Math.max(...kinds.map((q) => bytes[q.name as keyof typeof bytes]))),
    ),
  );
  const ws = kinds.map(({ dtype, fill }) =>
    Array.from({ length: copies }, () => {
      const w = allocResident(dtype, n * k);
      if (!w) throw new Error('gemv-shapes: no room for the resident weights (lower --mib)');
      for (let i = 0; i < w.length; i++) w[i] = fill(i);
      return w;
    }),
  );
  const best = kinds.map(() => Infinity);
  for (let r = 0; r < reps; r++)
    kinds.forEach(({ name }, j) => {
      const t = time(() => {
        for (const w of ws[j]!)
          weightProduct({ m, n, k, x, w: w as Float32Array | Uint16Array, ...(name === 'fp8' && { scales }), y });
      });
      best[j] = Math.min(best[j]!, t / copies);
    });
  const rate = (ms: number): string => `${((n * k) / ms / 1e6).toFixed(1)} G/s`;
  const cells = kinds.map(
    ({ name }, j) =>
      `${name} ${(best[j]! * 1000).toFixed(1).padStart(7)} us ${rate(best[j]!)}${j ? ` (${(best[j]! / best[0]!).toFixed(2)}x ${kinds[0]!.name}'s time)` : ''}`,
  );
  console.log(`  ${shape.padEnd(12)} x${String(copies).padEnd(5)} ${cells.join('  ')}`);
  for (const list of ws) for (const w of list) freeResident(w);
}
