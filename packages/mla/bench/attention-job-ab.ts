// Interleaved A/B of the f32 latent attention: the serial per-tile kernel it replaced (kept as the test
// reference, test/serial-attention-reference.ts) against core's latentAttention job, through the
// registered mla.flashPrefill kernel, on V3-mini's shapes (H 8, d_c 256, rope 32); each sample runs
// `calls` calls of one variant, the two alternate; medians of ms per call, outputs compared bitwise.
// usage: npx tsx --conditions=@dsv3/source bench/attention-job-ab.ts [--threads 2] [--s 128] [--t 128]
//        [--samples 31] [--calls 20]
import { parseArgs } from 'node:util';
import { CpuStorage, cpu, runKernel, setGemmThreads, type KernelTensor } from '@dsv3/core';
import { FLASH_PREFILL_OP } from '../src/index.js';
import { serialGemmAttention } from '../test/serial-attention-reference.js';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '2' },
    s: { type: 'string', default: '128' },
    t: { type: 'string', default: '128' },
    samples: { type: 'string', default: '31' },
    calls: { type: 'string', default: '20' },
  },
});
const [S, T, samples, calls] = [values.s, values.t, values.samples, values.calls].map(Number) as [
  number,
  number,
  number,
  number,
];
const [H, C, R] = [8, 256, 32];
if (!(S >= 1 && T >= S)) throw new Error(`attention-job-ab: need 1 <= --s <= --t, got ${S} and ${T}`);
setGemmThreads(Number(values.threads));

let seed = 3;
const rand = (n: number): Float32Array =>
  Float32Array.from({ length: n }, () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return (seed / 2 ** 32 - 0.5) * 2;
  });
const [qL, qR, kv, kr] = [rand(S * H * C), rand(S * H * R), rand(T * C), rand(T * R)];
const kt = (a: Float32Array, shape: number[]): KernelTensor => ({ storage: new CpuStorage(a), shape, dtype: 'f32' });
const inputs = [kt(qL, [1, S, H, C]), kt(qR, [1, S, H, R]), kt(kv, [1, T, C]), kt(kr, [1, T, R])];
const scale = 1 / Math.sqrt(C);
const variants = {
  serial: () =>
    serialGemmAttention(qL, qR, kv, kr, [{ T, offset: T - S, rowOf: null, base: 0 }], { S, H, C, R, scale }),
  job: () =>
    (runKernel(FLASH_PREFILL_OP, cpu, inputs, { scale, causalOffset: T - S })[0]!.storage as CpuStorage)
      .data as Float32Array,
};
const outs = Object.values(variants).map((v) => v());
const same = Buffer.from(outs[0]!.buffer).equals(Buffer.from(outs[1]!.buffer));
const ms: Record<string, number[]> = { serial: [], job: [] };
for (let i = 0; i < samples; i++)
  for (const [name, v] of Object.entries(variants)) {
    const t0 = performance.now();
    for (let c = 0; c < calls; c++) v();
    ms[name]!.push((performance.now() - t0) / calls);
  }
const median = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
const [a, b] = [median(ms.serial!), median(ms.job!)];
console.log(
  `S=${S} T=${T} H=${H} threads=${values.threads}: serial ${a.toFixed(3)} ms, job ${b.toFixed(3)} ms per call (${(a / b).toFixed(2)}x); outputs ${same ? 'bitwise equal' : 'DIFFER'}`,
);
