// Where a decode step's wall time goes, by category, in steady state (after a load warm-up and one whole
// generation): the GEMM engine's jobs timed on the calling thread (the outermost engine call: each GEMV
// job labelled by its products' shapes, with its weight bytes and GB/s against the copy bandwidth
// measured in the same process; the latent attention job; each row kernel), and the caller's time
// outside them split by a V8 CPU profile of the calling thread (the nearest frame a rule names; the rest
// by leaf function). Per step: totals over the counted rounds' decode steps / steps.
// usage: tsx --conditions=@dsv3/source bench/decode-categories.ts CKPT_DIR [--dtype fp8] [--threads 2]
//        [--prefill 512] [--decode 64] [--rounds 2] [--warmup 512] [--detail] [--jobs-only]
// --jobs-only leaves the profiler off (it slows the caller's JS): the jobs' times are then the step's own.
import { Session } from 'node:inspector/promises';
import { parseArgs } from 'node:util';
import { setGemmThreads } from '@dsv3/core';
import { type Gemv, WasmGemm } from '../../core/src/cpu/gemm/wasm-engine.js';
import { benchGeneration, copyBandwidth } from '../src/bench.js';
import { loadModel } from '../src/loader.js';
import { addOutsideSamples, type CategoryRule } from './caller-profile.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    dtype: { type: 'string', default: 'fp8' },
    threads: { type: 'string', default: '2' },
    prefill: { type: 'string', default: '512' },
    decode: { type: 'string', default: '64' },
    rounds: { type: 'string', default: '2' },
    warmup: { type: 'string', default: '512' },
    detail: { type: 'boolean', default: false },
    'jobs-only': { type: 'boolean', default: false },
  },
});
if (positionals.length !== 1) throw new Error('usage: decode-categories.ts CKPT_DIR [--dtype fp8] ...');
const [threads, prefill, decode, rounds, warmup] = [
  values.threads,
  values.prefill,
  values.decode,
  values.rounds,
  values.warmup,
].map(Number) as [number, number, number, number, number];

// --- job timers (on only in the counted decode steps): wall ms, calls and weight bytes by label ---
interface Job {
  ms: number;
  calls: number;
  bytes: number;
}
const jobs = new Map<string, Job>();
let counting = false;
let depth = 0;
const elementBytes = (v: Gemv): number => (v.kind === 'f32' ? 4 : v.kind === 'bf16' ? 2 : 1);
const gemvLabel = (list: readonly Gemv[]): [string, number] => {
  let bytes = 0;
  const shapes = new Map<string, number>();
  for (const v of list) {
    bytes += v.n * v.k * elementBytes(v);
    const s = `${v.kind} ${v.n}x${v.k}`;
    shapes.set(s, (shapes.get(s) ?? 0) + 1);
  }
  return [`GEMV ${[...shapes].map(([s, c]) => (c > 1 ? `${c}x ${s}` : s)).join(' + ')}`, bytes];
};
type Labeller = (args: unknown[]) => [string, number];
const timed: Record<string, Labeller> = {
  run: (a) => {
    const p = a[0] as { m: number; n: number; k: number };
    return [`f32 product ${p.m}x${p.n}x${p.k}`, 4 * p.n * p.k];
  },
  gemvMany: (a) => gemvLabel(a[0] as Gemv[]),
  weightGemmMany: (a) => [`weight GEMM ${(a[0] as Gemv[]).length} products`, 0],
  runRowKernelList: (a) => [`row kernel ${a[0]}`, 0],
  runTasks: (a) => [String(a[2]), 0],
};
const proto = WasmGemm.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
for (const [name, label] of Object.entries(timed)) {
  const inner = proto[name]!;
  proto[name] = function (this: unknown, ...a: unknown[]) {
    if (!counting || depth > 0) return inner.apply(this, a);
    depth++;
    const t = performance.now();
    try {
      return inner.apply(this, a);
    } finally {
      depth--;
      const [k, bytes] = label(a);
      const j = jobs.get(k) ?? { ms: 0, calls: 0, bytes: 0 };
      j.ms += performance.now() - t;
      j.calls++;
      j.bytes += bytes;
      jobs.set(k, j);
    }
  };
}

setGemmThreads(threads);
const model = loadModel(positionals[0]!, {
  weights: values.dtype as 'f32' | 'bf16' | 'fp8',
  warmupTokens: warmup || undefined,
});
await benchGeneration(model, { prefill, decode });
const bw = copyBandwidth();

const rules: CategoryRule[] = [
  ['(garbage collector)', /^\(garbage collector\)$/],
  ['RMSNorm', /rms ?norm/i],
  ['RoPE', /rope|rotat|cosSin/i],
  ['MoE routing (gate, top-k)', /gate|route|topk|group|sigmoid/i],
  ['MoE experts / combine', /dispatch|gather|combine|scatter|expert/i],
  ['embedding', /embed/i],
  ['KV cache', /append|cache|page/i],
  ['sampling / read-back', /sample|readTokens|argmax|rowMax/i],
];
const engineCalls = new Set(Object.keys(timed));
const session = new Session();
session.connect();
await session.post('Profiler.enable');
await session.post('Profiler.setSamplingInterval', { interval: 100 });
const outside = new Map<string, number>();
let wall = 0;
const cpu0 = process.cpuUsage();
let cpuMs = 0;
for (let r = 0; r < rounds; r++) {
  let c0 = cpu0;
  const res = await benchGeneration(model, {
    prefill,
    decode,
    afterPrefill: async () => {
      if (!values['jobs-only']) await session.post('Profiler.start');
      counting = true;
      c0 = process.cpuUsage();
    },
  });
  counting = false;
  const c = process.cpuUsage(c0);
  cpuMs += (c.user + c.system) / 1000;
  wall += res.stepMs.reduce((a, b) => a + b, 0);
  if (values['jobs-only']) continue;
  const { profile } = await session.post('Profiler.stop');
  addOutsideSamples(profile, engineCalls, rules, values.detail ?? false, outside);
}
session.disconnect();

const steps = rounds * decode;
const perStep = wall / steps;
let jobsMs = 0;
for (const j of jobs.values()) jobsMs += j.ms;
console.log(
  `${values.dtype}, ${threads} threads, prefill ${prefill}, ${decode} steps x ${rounds}: ${perStep.toFixed(2)} ms a step (process CPU ${(cpuMs / steps).toFixed(2)} ms), copy bandwidth ${(bw / 1e9).toFixed(1)} GB/s`,
);
console.log(`jobs ${(jobsMs / steps).toFixed(2)} ms, outside ${(perStep - jobsMs / steps).toFixed(2)} ms a step`);
const rows = [...jobs].map(([k, j]) => {
  const ms = j.ms / steps;
  const rate =
    j.bytes > 0
      ? ` ${(j.bytes / steps / 1e6).toFixed(1)} MB, ${(j.bytes / j.ms / 1e6).toFixed(1)} GB/s = ${((j.bytes / j.ms / 1e6 / (bw / 1e9)) * 100).toFixed(0)}% of copy`
      : '';
  return [ms, `job: ${k} (${(j.calls / steps).toFixed(1)} calls)${rate}`] as const;
});
const outsideRows = [...outside].map(([k, v]) => [v / steps, `outside: ${k}`] as const);
for (const [ms, k] of [...rows, ...outsideRows].sort((a, b) => b[0] - a[0]))
  if (ms >= 0.02)
    console.log(`${ms.toFixed(3).padStart(8)} ms ${((100 * ms) / perStep).toFixed(1).padStart(5)}%  ${k}`);
