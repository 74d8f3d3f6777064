// CPU and allocation profile of the calling thread over a few prefills (after warm-up ones), through
// the inspector: writes OUT.cpuprofile and OUT.heapprofile (open them in Chrome DevTools) and prints
// the wall and process CPU time of the profiled prefills.
// usage: tsx --conditions=@dsv3/source bench/prefill-profile.ts CKPT_DIR [--dtype bf16] [--threads 2]
//        [--prefill 128] [--warmup 3] [--rounds 6] [--out /tmp/prefill] [--prefill-activations f32|i16]
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { parseArgs } from 'node:util';
import { setGemmThreads } from '@dsv3/core';
import { benchGeneration } from '../src/bench.js';
import { loadModel } from '../src/loader.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    dtype: { type: 'string', default: 'bf16' },
    threads: { type: 'string', default: '2' },
    prefill: { type: 'string', default: '128' },
    warmup: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '6' },
    out: { type: 'string', default: '/tmp/prefill' },
    'prefill-activations': { type: 'string', default: 'f32' },
  },
});
if (positionals.length !== 1) throw new Error('usage: prefill-profile.ts CKPT_DIR [--dtype bf16] ...');
setGemmThreads(Number(values.threads));
const model = loadModel(positionals[0]!, {
  weights: values.dtype as 'f32' | 'bf16' | 'fp8',
  prefillActivations: values['prefill-activations'] as 'f32' | 'i16',
});
const prefill = Number(values.prefill);
for (let r = 0; r < Number(values.warmup); r++) await benchGeneration(model, { prefill, decode: 0 });

const session = new Session();
session.connect();
await session.post('HeapProfiler.enable');
// every sampled allocation, collected ones included (what drives the collections)
await session.post('HeapProfiler.startSampling', {
  samplingInterval: 65536,
  includeObjectsCollectedByMajorGC: true,
  includeObjectsCollectedByMinorGC: true,
});
await session.post('Profiler.enable');
await session.post('Profiler.setSamplingInterval', { interval: 200 });
await session.post('Profiler.start');
const c0 = process.cpuUsage();
const t0 = performance.now();
const rounds = Number(values.rounds);
for (let r = 0; r < rounds; r++) await benchGeneration(model, { prefill, decode: 0 });
const wall = performance.now() - t0;
const c = process.cpuUsage(c0);
const { profile } = await session.post('Profiler.stop');
const heap = await session.post('HeapProfiler.stopSampling');
session.disconnect();
writeFileSync(`${values.out}.cpuprofile`, JSON.stringify(profile));
writeFileSync(`${values.out}.heapprofile`, JSON.stringify(heap.profile));
console.log(
  `${rounds} prefills of ${prefill}: wall ${wall.toFixed(0)} ms, process CPU ${((c.user + c.system) / 1000).toFixed(0)} ms; wrote ${values.out}.cpuprofile and .heapprofile`,
);
