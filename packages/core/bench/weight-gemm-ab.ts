// Interleaved A/B of the two paths for products of many rows against resident bf16 / FP8 weights:
// the weight widened inside the GEMM's packing (gemmConfig.widenInPacking, the default) against the
// whole weight widened first. V3-mini prefill shapes (128 tokens): the 64 experts' gate + up
// projections as one weightProducts call (~12 rows each), their down projections, the dense MLP's
// gate projection and an attention projection. Each repetition runs both variants back to back;
// medians of ms per call, outputs compared bitwise.
// usage: npx tsx --conditions=@dsv3/source bench/weight-gemm-ab.ts [--threads 1] [--reps 15] [--dtype bf16]
import { parseArgs } from 'node:util';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { allocResident, setGemmThreads, weightProducts, type WeightProductArgs } from '../src/cpu/gemm/index.js';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '1' },
    reps: { type: 'string', default: '15' },
    dtype: { type: 'string', default: 'bf16' },
  },
});
const reps = Number(values.reps);
const kind = values.dtype;
if (kind !== 'bf16' && kind !== 'fp8') throw new Error(`weight-gemm-ab: --dtype is bf16 or fp8, got ${kind}`);
setGemmThreads(Number(values.threads));

let seed = 1;
const rand = (): number => {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return seed / 2 ** 32 - 0.5;
};
/** A resident weight [n, k] of the benchmark's kind (random finite bf16 values / E4M3 codes). */
function weight(n: number, k: number): Pick<WeightProductArgs, 'w' | 'scales'> {
  const w = allocResident(kind === 'bf16' ? 'bf16' : 'fp8-e4m3', n * k) as Uint16Array | Uint8Array;
  if (!w) throw new Error('weight-gemm-ab: no resident storage');
  const f = new Float32Array(1);
  const bf16 = new Uint16Array(f.buffer);
  for (let i = 0; i < w.length; i++) {
    f[0] = rand();
    const b = Math.floor((f[0] + 0.5) * 254); // an E4M3 code, never a NaN one (0x7f / 0xff)
    w[i] = kind === 'bf16' ? bf16[1]! : (b & 0x7f) === 0x7f ? b - 1 : b;
  }
  if (kind === 'bf16') return { w };
  return {
    w,
    scales: Float32Array.from({ length: Math.ceil(n / 128) * Math.ceil(k / 128) }, () => 0.01 + Math.abs(rand())),
  };
}
const x = (m: number, k: number): Float32Array => Float32Array.from({ length: m * k }, rand);

/** One benchmark case: the weightProducts call it makes. */
const cases: { name: string; list: WeightProductArgs[] }[] = [];
const experts = Array.from({ length: 64 }, () => ({
  gate: weight(256, 1024),
  up: weight(256, 1024),
  down: weight(1024, 256),
}));
const rows = 12;
const xe = experts.map(() => x(rows, 1024));
const he = experts.map(() => x(rows, 256));
cases.push({
  name: '64 experts gate+up 12x256x1024',
  list: experts.flatMap((e, i) => [
    { m: rows, n: 256, k: 1024, x: xe[i]!, ...e.gate, y: new Float32Array(rows * 256) },
    { m: rows, n: 256, k: 1024, x: xe[i]!, ...e.up, y: new Float32Array(rows * 256) },
  ]),
});
cases.push({
  name: '64 experts down 12x1024x256',
  list: experts.map((e, i) => ({ m: rows, n: 1024, k: 256, x: he[i]!, ...e.down, y: new Float32Array(rows * 1024) })),
});
cases.push({
  name: 'dense gate 128x2816x1024',
  list: [{ m: 128, n: 2816, k: 1024, x: x(128, 1024), ...weight(2816, 1024), y: new Float32Array(128 * 2816) }],
});
cases.push({
  name: 'attention q_a 128x384x1024',
  list: [{ m: 128, n: 384, k: 1024, x: x(128, 1024), ...weight(384, 1024), y: new Float32Array(128 * 384) }],
});

const variants = [
  { name: 'widen first', inPacking: false },
  { name: 'in packing', inPacking: true },
];
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
console.log(`${kind}, ${values.threads} thread(s), ${reps} interleaved repetitions (first dropped)`);
for (const c of cases) {
  const ms = variants.map(() => [] as number[]);
  const outs = variants.map(() => [] as Float32Array[]);
  for (let r = 0; r <= reps; r++)
    variants.forEach((v, i) => {
      gemmConfig.widenInPacking = v.inPacking;
      const t0 = performance.now();
      weightProducts(c.list);
      if (r > 0) ms[i]!.push(performance.now() - t0);
      if (r === reps) outs[i] = c.list.map((p) => p.y.slice());
    });
  const same = outs[1]!.every((y, j) => y.every((v, q) => Object.is(v, outs[0]![j]![q])));
  const [a, b] = [median(ms[0]!), median(ms[1]!)];
  console.log(
    `${c.name.padEnd(32)} widen first ${a.toFixed(2).padStart(7)} ms  in packing ${b.toFixed(2).padStart(7)} ms  (${(a / b).toFixed(2)}x)  outputs ${same ? 'bitwise equal' : 'DIFFER'}`,
  );
}
gemmConfig.widenInPacking = true;
