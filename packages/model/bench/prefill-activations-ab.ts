// Prefill with f32 against i16 activations (core's setPrefillActivations) on one loaded checkpoint, the
// two alternating prefill by prefill in one process (the mode is process-wide and read per product):
// process CPU ms and wall ms per prefill of --prefill tokens (the bench's prompt, last-position logits),
// medians, after --warmup prefills of each. Under load, run it pinned with --threads 1 (taskset -c 1):
// CPU time is then what the prefill costs, whatever else shares the core.
// usage: npx tsx --conditions=@dsv3/source bench/prefill-activations-ab.ts CKPT_DIR [--dtype bf16|fp8]
//        [--prefill 512] [--rounds 5] [--warmup 1] [--threads N]
import { parseArgs } from 'node:util';
import { noGrad, noGradAsync, setGemmThreads, setPrefillActivations, tensor } from '@dsv3/core';
import { loadModel } from '../src/index.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    dtype: { type: 'string', default: 'bf16' },
    prefill: { type: 'string', default: '512' },
    rounds: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '1' },
    threads: { type: 'string', default: '' },
  },
});
const weights = values.dtype;
if (weights !== 'bf16' && weights !== 'fp8') throw new Error(`--dtype is bf16 or fp8, got ${weights}`);
if (!positionals[0]) throw new Error('usage: prefill-activations-ab.ts CKPT_DIR [--dtype bf16|fp8]');
if (values.threads) setGemmThreads(Number(values.threads));
const prefill = Number(values.prefill);
const model = noGrad(() => loadModel(positionals[0]!, { weights }));
const prompt = Int32Array.from({ length: prefill }, (_, i) => (i * 7919 + 13) % model.config.vocabSize);

async function timePrefill(mode: 'f32' | 'i16'): Promise<{ cpu: number; wall: number }> {
  setPrefillActivations(mode);
  return noGradAsync(async () => {
    const cache = model.newCache(prefill + 16);
    const seqs = [cache.allocateSequence()];
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const out = model.step(cache, seqs, tensor(prompt, { shape: [1, prefill], dtype: 'i32' }), { logits: 'last' });
    await out.logits.data();
    const wall = performance.now() - t0;
    const c = process.cpuUsage(c0);
    cache.dispose();
    return { cpu: (c.user + c.system) / 1000, wall };
  });
}

const modes = ['f32', 'i16'] as const;
for (let w = 0; w < Number(values.warmup); w++) for (const m of modes) await timePrefill(m);
const t: Record<string, { cpu: number; wall: number }[]> = { f32: [], i16: [] };
for (let r = 0; r < Number(values.rounds); r++)
  for (const m of r % 2 === 0 ? modes : ([...modes].reverse() as ('f32' | 'i16')[])) t[m]!.push(await timePrefill(m));
const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const f = (m: string, k: 'cpu' | 'wall'): number => med(t[m]!.map((x) => x[k]));
console.log(
  JSON.stringify({
    dtype: weights,
    prefill,
    threads: values.threads || 'default',
    f32_cpu_ms: f('f32', 'cpu'),
    i16_cpu_ms: f('i16', 'cpu'),
    cpu_ratio: f('f32', 'cpu') / f('i16', 'cpu'),
    f32_wall_ms: f('f32', 'wall'),
    i16_wall_ms: f('i16', 'wall'),
    wall_ratio: f('f32', 'wall') / f('i16', 'wall'),
    f32_cpu_all: t.f32!.map((x) => Math.round(x.cpu)),
    i16_cpu_all: t.i16!.map((x) => Math.round(x.cpu)),
  }),
);
