// Where a prefill's wall time goes, by category: the GEMM engine's jobs timed on the calling thread (the
// outermost engine call: weight products with their staging, the f32 GEMM, GEMVs, the attention job, each
// row kernel), and the caller's time outside them split by a V8 CPU profile of the calling thread (the
// nearest frame a rule names: RMSNorm, RoPE, routing, ...). Wall per prefill, medians over the rounds.
// usage: tsx --conditions=@dsv3/source bench/prefill-categories.ts CKPT_DIR [--dtype f32] [--threads 2]
//        [--prefill 512] [--warmup 2] [--rounds 3] [--prefill-activations i16|f32]
import { Session } from 'node:inspector/promises';
import { parseArgs } from 'node:util';
import { setGemmThreads } from '@dsv3/core';
import { WasmGemm } from '../../core/src/cpu/gemm/wasm-engine.js';
import { benchGeneration } from '../src/bench.js';
import { loadModel } from '../src/loader.js';
import { addOutsideSamples, type CategoryRule } from './caller-profile.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    dtype: { type: 'string', default: 'f32' },
    threads: { type: 'string', default: '2' },
    prefill: { type: 'string', default: '512' },
    warmup: { type: 'string', default: '2' },
    rounds: { type: 'string', default: '3' },
    'prefill-activations': { type: 'string', default: 'i16' },
    detail: { type: 'boolean', default: false },
  },
});
if (positionals.length !== 1) throw new Error('usage: prefill-categories.ts CKPT_DIR [--dtype f32] ...');

// --- job timers: the outermost engine call of each kind, wall ms by label ---
const jobMs = new Map<string, number>();
let depth = 0;
type Labeller = (args: unknown[]) => string;
const timed: Record<string, Labeller> = {
  run: () => 'f32 GEMM (activations x activations)',
  gemvMany: () => 'GEMV (the head at the last position)',
  weightGemmMany: () => 'weight GEMMs (staging included)',
  runRowKernelList: (a) => `row kernel ${a[0]}`,
  runTasks: (a) => String(a[2]),
};
const proto = WasmGemm.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
for (const [name, label] of Object.entries(timed)) {
  const inner = proto[name]!;
  proto[name] = function (this: unknown, ...a: unknown[]) {
    if (depth > 0) return inner.apply(this, a);
    depth++;
    const t = performance.now();
    try {
      return inner.apply(this, a);
    } finally {
      depth--;
      const k = label(a);
      jobMs.set(k, (jobMs.get(k) ?? 0) + performance.now() - t);
    }
  };
}

setGemmThreads(Number(values.threads));
const model = loadModel(positionals[0]!, {
  weights: values.dtype as 'f32' | 'bf16' | 'fp8',
  prefillActivations: values['prefill-activations'] as 'f32' | 'i16',
});
const prefill = Number(values.prefill);
for (let r = 0; r < Number(values.warmup); r++) await benchGeneration(model, { prefill, decode: 0 });
jobMs.clear();

// --- the caller's profile: samples outside the timed engine calls, by rule ---
const rules: CategoryRule[] = [
  ['(garbage collector)', /^\(garbage collector\)$/],
  ['RMSNorm', /rms ?norm/i],
  ['RoPE / rotation tables', /rope|rotat|cosSin/i],
  ['MoE routing (gate, top-k)', /gate|route|topk|group|sigmoid/i],
  ['MoE dispatch / combine', /dispatch|gather|combine|scatter|expert/i],
  ['embedding', /embed/i],
  ['KV cache write', /append|cache|page/i],
];
const engineCalls = new Set(Object.keys(timed));
const session = new Session();
session.connect();
await session.post('Profiler.enable');
await session.post('Profiler.setSamplingInterval', { interval: 200 });
await session.post('Profiler.start');
const rounds = Number(values.rounds);
const walls: number[] = [];
const c0 = process.cpuUsage();
for (let r = 0; r < rounds; r++) {
  const t = performance.now();
  await benchGeneration(model, { prefill, decode: 0 });
  walls.push(performance.now() - t);
}
const cpu = process.cpuUsage(c0);
const { profile } = await session.post('Profiler.stop');
session.disconnect();

const outside = new Map<string, number>();
addOutsideSamples(profile, engineCalls, rules, values.detail ?? false, outside);

const wall = walls.reduce((a, b) => a + b, 0) / rounds;
const rows: [string, number][] = [...jobMs].map(([k, v]) => [`job: ${k}`, v / rounds]);
const jobsTotal = rows.reduce((a, [, v]) => a + v, 0);
const outsideRows = [...outside].map(([k, v]) => [`outside: ${k}`, v / rounds] as [string, number]);
console.log(
  `${values.dtype} (${values['prefill-activations']}), ${values.threads} threads, prefill ${prefill}: wall ${walls.map((w) => w.toFixed(0)).join(' / ')} ms, process CPU ${((cpu.user + cpu.system) / 1000 / rounds).toFixed(0)} ms a prefill`,
);
console.log(`jobs ${jobsTotal.toFixed(1)} ms, outside ${(wall - jobsTotal).toFixed(1)} ms a prefill`);
for (const [k, v] of [...rows, ...outsideRows].sort((a, b) => b[1] - a[1]))
  if (v >= 0.5) console.log(`${v.toFixed(1).padStart(8)} ms ${((100 * v) / wall).toFixed(1).padStart(5)}%  ${k}`);
