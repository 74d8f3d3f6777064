// The first generations after a load, step by step: whether the load-time warm-up (warm-up.ts) leaves
// one-time costs (V8 compiling the decode path, first touches) to the first request. Loads the model
// with the CLI's warm-up, then runs --runs greedy generations in turn (prefill, then --decode steps),
// printing each one's ms/step (mean; p10 / p50 / p90 of the steps) and every step's wall and process CPU
// milliseconds.
// With --mark it prints a line before the prefill and before every step, so that V8's own traces
// (node --trace-opt --trace-deopt --trace-gc --import tsx ...) can be read step by step.
// With --heap it prints every step's JS heap growth (KiB; `-` where the heap shrank, i.e. a collection
// ran inside the step) and the number of such steps.
// usage: tsx --conditions=@dsv3/source bench/first-generations.ts CKPT_DIR [--dtype fp8] [--threads 2]
//        [--prefill 32] [--decode 32] [--runs 3] [--warmup 128] [--mark] [--heap] [--alloc-profile]
// --alloc-profile samples the allocations of the last generation's decode steps (V8's sampling heap
// profiler, garbage included) and prints the functions that allocated the most bytes per step.
import { Session } from 'node:inspector/promises';
import { parseArgs } from 'node:util';
import { getHeapStatistics } from 'node:v8';
import { noGradAsync, setGemmThreads, tensor } from '@dsv3/core';
import { readTokens, sampleTokens, samplingTensors } from '@dsv3/mtp';
import { loadModel } from '../src/loader.js';
import { DEFAULT_WARMUP_TOKENS } from '../src/warm-up.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    dtype: { type: 'string', default: 'fp8' },
    threads: { type: 'string', default: '2' },
    prefill: { type: 'string', default: '32' },
    decode: { type: 'string', default: '32' },
    runs: { type: 'string', default: '3' },
    warmup: { type: 'string', default: String(DEFAULT_WARMUP_TOKENS) },
    mark: { type: 'boolean', default: false },
    heap: { type: 'boolean', default: false },
    'alloc-profile': { type: 'boolean', default: false },
  },
});
if (positionals.length !== 1) throw new Error('usage: first-generations.ts CKPT_DIR [--dtype fp8] [--runs 3] ...');
const [threads, prefill, decode, runs, warmup] = [
  values.threads,
  values.prefill,
  values.decode,
  values.runs,
  values.warmup,
].map(Number) as [number, number, number, number, number];
setGemmThreads(threads);
const weights = values.dtype as 'f32' | 'bf16' | 'fp8';
const model = loadModel(positionals[0]!, { weights, warmupTokens: warmup || undefined });
const V = model.config.vocabSize;

interface ProfileNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: ProfileNode[];
}
/** The sampled bytes per step by allocating function (a built-in such as subarray named with its caller), largest first. */
function printAllocations(head: ProfileNode, steps: number): void {
  const bytes = new Map<string, number>();
  const walk = (n: ProfileNode, caller: string): void => {
    const f = n.callFrame;
    const name = `${f.functionName || '(anonymous)'}${f.url ? ` ${f.url.split('/').slice(-2).join('/')}` : ''}`;
    const key = f.url ? name : `${name} in ${caller}`;
    bytes.set(key, (bytes.get(key) ?? 0) + n.selfSize);
    for (const c of n.children) walk(c, f.url ? name : caller);
  };
  walk(head, '');
  const all = [...bytes.values()].reduce((a, b) => a + b, 0);
  console.log(`  sampled allocation: ${(all / steps / 1024).toFixed(1)} KiB per step; by function:`);
  for (const [key, b] of [...bytes].sort((a, b) => b[1] - a[1]).slice(0, 40))
    console.log(`    ${(b / steps / 1024).toFixed(1).padStart(8)} KiB  ${key}`);
}
const inspector = values['alloc-profile'] ? new Session() : undefined;
inspector?.connect();
for (let r = 0; r < runs; r++) {
  await noGradAsync(async () => {
    const backend = model.backend;
    const greedy = samplingTensors([{ temperature: 0 }], backend);
    const cache = model.newCache(prefill + decode + 16);
    const seqs = [cache.allocateSequence()];
    const prompt = Int32Array.from({ length: prefill }, (_, i) => (i * 7919 + 13) % V);
    if (values.mark) console.log(`MARK generation ${r} prefill`);
    const pre = model.step(cache, seqs, tensor(prompt, { shape: [1, prefill], dtype: 'i32', backend }), {
      logits: 'last',
    });
    let next = await readTokens(sampleTokens(pre.logits, greedy));
    const wall: number[] = [];
    const cpu: number[] = [];
    const heapGrowth: number[] = [];
    const profiling = inspector && r === runs - 1;
    if (profiling)
      await inspector.post('HeapProfiler.startSampling', {
        samplingInterval: 512,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: true,
      });
    for (let s = 0; s < decode; s++) {
      if (values.mark) console.log(`MARK generation ${r} step ${s}`);
      const h0 = values.heap ? getHeapStatistics().used_heap_size : 0;
      const t = performance.now();
      const c0 = process.cpuUsage();
      const { logits } = model.step(
        cache,
        seqs,
        tensor(Int32Array.from(next), { shape: [1, 1], dtype: 'i32', backend }),
      );
      next = await readTokens(sampleTokens(logits, greedy));
      wall.push(performance.now() - t);
      const c = process.cpuUsage(c0);
      cpu.push((c.user + c.system) / 1000);
      if (values.heap) heapGrowth.push(getHeapStatistics().used_heap_size - h0);
    }
    if (profiling) {
      const { profile } = (await inspector.post('HeapProfiler.stopSampling')) as { profile: { head: ProfileNode } };
      printAllocations(profile.head, decode);
    }
    cache.dispose();
    if (values.heap) {
      // a step whose heap shrank ran a collection (a scavenge frees ~16 MiB; a step allocates ~1-2)
      const clean = heapGrowth.filter((g) => g >= 0).map((g) => g / 1024);
      const sorted = [...clean].sort((a, b) => a - b);
      console.log(`  heap KiB per step: ${heapGrowth.map((g) => (g < 0 ? '-' : (g / 1024).toFixed(0))).join(' ')}`);
      console.log(
        `  heap growth of the ${clean.length} steps without a collection: median ${(sorted[sorted.length >> 1] ?? 0).toFixed(1)} KiB; ` +
          `steps with a collection: ${heapGrowth.length - clean.length}`,
      );
    }
    const mean = (a: number[]): string => (a.reduce((x, y) => x + y, 0) / a.length).toFixed(2);
    const list = (a: number[]): string => a.map((x) => x.toFixed(0)).join(' ');
    const sortedWall = [...wall].sort((a, b) => a - b);
    const pct = (q: number): string => sortedWall[Math.min(wall.length - 1, Math.floor(q * wall.length))]!.toFixed(2);
    console.log(
      `generation ${r}: ${mean(wall)} ms/step (CPU ${mean(cpu)}); steps p10 ${pct(0.1)} p50 ${pct(0.5)} p90 ${pct(0.9)}`,
    );
    console.log(`  wall ms per step: ${list(wall)}`);
    console.log(`  CPU ms per step:  ${list(cpu)}`);
  });
}
