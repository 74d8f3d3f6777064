// A fresh prompt's prefill with MLA's attention in the absorbed form against the MHA form (@dsv3/mla's
// mhaPrefillConfig.minTokens: Infinity = absorbed, else the MHA form from that many tokens), the two
// alternating prefill by prefill on one loaded checkpoint: process CPU ms and wall ms per prefill of
// --prefill tokens (the bench's prompt, last-position logits), medians, after --warmup prefills of each;
// the two runs' last-position logits compared (rel L2). Under load, run it pinned with --threads 1
// (taskset -c 1): CPU time is then what the prefill costs, whatever else shares the core.
// usage: npx tsx --conditions=@dsv3/source bench/mha-prefill-ab.ts CKPT_DIR [--dtype f32|bf16|fp8]
//        [--prefill 512] [--rounds 5] [--warmup 1] [--threads N] [--min-tokens N] [--prefill-activations f32|i16]
//        [--greedy N]
import { parseArgs } from 'node:util';
import { noGrad, noGradAsync, setGemmThreads, tensor } from '@dsv3/core';
import { mhaPrefillConfig } from '@dsv3/mla';
import { benchGeneration } from '../src/bench.js';
import { loadModel } from '../src/index.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    dtype: { type: 'string', default: 'fp8' },
    prefill: { type: 'string', default: '512' },
    rounds: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '1' },
    threads: { type: 'string', default: '' },
    'min-tokens': { type: 'string', default: String(mhaPrefillConfig.minTokens) },
    'prefill-activations': { type: 'string' },
    greedy: { type: 'string', default: '0' },
  },
});
const weights = values.dtype;
if (weights !== 'f32' && weights !== 'bf16' && weights !== 'fp8')
  throw new Error(`--dtype is f32, bf16 or fp8, got ${weights}`);
if (!positionals[0]) throw new Error('usage: mha-prefill-ab.ts CKPT_DIR [--dtype f32|bf16|fp8]');
if (values.threads) setGemmThreads(Number(values.threads));
const prefill = Number(values.prefill);
const minTokens = { absorbed: Number.POSITIVE_INFINITY, mha: Number(values['min-tokens']) };
const acts = values['prefill-activations'];
if (acts !== undefined && acts !== 'f32' && acts !== 'i16')
  throw new Error(`--prefill-activations is f32 or i16, got ${acts}`);
const model = noGrad(() => loadModel(positionals[0]!, { weights, prefillActivations: acts }));
const prompt = Int32Array.from({ length: prefill }, (_, i) => (i * 7919 + 13) % model.config.vocabSize);
type Form = keyof typeof minTokens;
const logits: Partial<Record<Form, Float32Array>> = {};

async function timePrefill(form: Form): Promise<{ cpu: number; wall: number }> {
  mhaPrefillConfig.minTokens = minTokens[form];
  return noGradAsync(async () => {
    const cache = model.newCache(prefill + 16);
    const seqs = [cache.allocateSequence()];
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const out = model.step(cache, seqs, tensor(prompt, { shape: [1, prefill], dtype: 'i32' }), { logits: 'last' });
    logits[form] = (await out.logits.data()) as Float32Array;
    const wall = performance.now() - t0;
    const c = process.cpuUsage(c0);
    cache.dispose();
    return { cpu: (c.user + c.system) / 1000, wall };
  });
}

const forms: Form[] = ['absorbed', 'mha'];
for (let w = 0; w < Number(values.warmup); w++) for (const f of forms) await timePrefill(f);
const t: Record<Form, { cpu: number; wall: number }[]> = { absorbed: [], mha: [] };
for (let r = 0; r < Number(values.rounds); r++)
  for (const f of r % 2 === 0 ? forms : [...forms].reverse()) t[f].push(await timePrefill(f));
const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const m = (f: Form, k: 'cpu' | 'wall'): number => med(t[f].map((x) => x[k]));
const [a, b] = [logits.absorbed!, logits.mha!];
let d2 = 0;
let n2 = 0;
for (let i = 0; i < a.length; i++) {
  d2 += (a[i]! - b[i]!) ** 2;
  n2 += a[i]! ** 2;
}
// --greedy N: the bench's prompt then N greedy steps in each form; leading tokens that agree
const greedy: Partial<Record<Form, number[]>> = {};
for (const f of Number(values.greedy) > 0 ? forms : []) {
  mhaPrefillConfig.minTokens = minTokens[f];
  greedy[f] = (await noGradAsync(() => benchGeneration(model, { prefill, decode: Number(values.greedy) }))).tokens;
}
const same = greedy.mha ? greedy.mha.findIndex((t, i) => t !== greedy.absorbed![i]) : -1;
console.log(
  JSON.stringify({
    dtype: weights,
    prefill,
    threads: values.threads || 'default',
    absorbed_cpu_ms: m('absorbed', 'cpu'),
    mha_cpu_ms: m('mha', 'cpu'),
    cpu_ratio: m('absorbed', 'cpu') / m('mha', 'cpu'),
    absorbed_wall_ms: m('absorbed', 'wall'),
    mha_wall_ms: m('mha', 'wall'),
    wall_ratio: m('absorbed', 'wall') / m('mha', 'wall'),
    absorbed_cpu_all: t.absorbed.map((x) => Math.round(x.cpu)),
    mha_cpu_all: t.mha.map((x) => Math.round(x.cpu)),
    logits_rel_l2: Math.sqrt(d2 / n2),
    ...(greedy.mha ? { greedy_same: same < 0 ? greedy.mha.length : same, greedy_of: greedy.mha.length } : {}),
  }),
);
