// The first generations after a load, step by step: whether the load-time warm-up (warm-up.ts) leaves
// one-time costs (V8 compiling the decode path, first touches) to the first request. Loads the model
// with the CLI's warm-up, then runs --runs greedy generations in turn (prefill, then --decode steps),
// printing each one's ms/step and every step's wall and process CPU milliseconds.
// With --mark it prints a line before the prefill and before every step, so that V8's own traces
// (node --trace-opt --trace-deopt --trace-gc --import tsx ...) can be read step by step.
// usage: tsx --conditions=@dsv3/source bench/first-generations.ts CKPT_DIR [--dtype fp8] [--threads 2]
//        [--prefill 32] [--decode 32] [--runs 3] [--warmup 128] [--mark]
import { parseArgs } from 'node:util';
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
    for (let s = 0; s < decode; s++) {
      if (values.mark) console.log(`MARK generation ${r} step ${s}`);
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
    }
    cache.dispose();
    const mean = (a: number[]): string => (a.reduce((x, y) => x + y, 0) / a.length).toFixed(2);
    const list = (a: number[]): string => a.map((x) => x.toFixed(0)).join(' ');
    console.log(`generation ${r}: ${mean(wall)} ms/step (CPU ${mean(cpu)})`);
    console.log(`  wall ms per step: ${list(wall)}`);
    console.log(`  CPU ms per step:  ${list(cpu)}`);
  });
}
