// Interleaved A/B of GEMM-engine settings on one loaded model: each round runs every variant's greedy
// decode (same prompt, same steps) in turn, so load swings on a shared machine hit all variants alike;
// prints per-variant median ms/token (and the prefill's median ms, and the process CPU time per round)
// and whether the greedy tokens match the first variant's, and the workers woken per round: the calling
// thread's Atomics.notify calls on the job counter (word 0) that woke a sleeping worker (the prefill's
// are the same for every variant; --decode 0 measures them alone), and the 10th percentile and median
// of all counted decode steps' ms.
// usage: tsx --conditions=@dsv3/source bench/decode-ab.ts CKPT_DIR [--dtype bf16] [--threads 2]
//        [--prefill 16] [--decode 16] [--rounds 5] --variant 'name:key=value,key=value' ...
// keys are fields of core's gemmConfig (numbers or true/false), e.g. --variant 'nospin:spinMicros=0',
// or headDtype=bf16|fp8 (with --dtype fp8: one model is loaded per head storage, all kept loaded).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { setGemmThreads, tierUpSooner } from '@dsv3/core';
import { gemmConfig } from '../../core/src/cpu/gemm/config.js';
import { benchGeneration } from '../src/bench.js';
import { loadModel } from '../src/loader.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    dtype: { type: 'string', default: 'bf16' },
    threads: { type: 'string', default: '2' },
    prefill: { type: 'string', default: '16' },
    decode: { type: 'string', default: '16' },
    rounds: { type: 'string', default: '5' },
    batch: { type: 'string', default: '1' },
    variant: { type: 'string', multiple: true, default: [] },
  },
});
if (positionals.length !== 1 || values.variant.length < 1)
  throw new Error("usage: decode-ab.ts CKPT_DIR --variant 'name:key=value,...' [--variant ...]");

type Config = Record<string, unknown>;
const cfg = gemmConfig as unknown as Config;
const parseVariant = (spec: string): { name: string; set: Config; head: 'bf16' | 'fp8' } => {
  const [name, body = ''] = spec.split(':');
  const set: Config = {};
  let head: 'bf16' | 'fp8' = 'bf16';
  for (const kv of body.split(',').filter(Boolean)) {
    const [key, raw] = kv.split('=') as [string, string | undefined];
    if (key === 'headDtype') {
      if (raw !== 'bf16' && raw !== 'fp8') throw new Error(`decode-ab: headDtype is bf16 or fp8, got "${raw}"`);
      head = raw;
      continue;
    }
    if (!(key in cfg)) throw new Error(`decode-ab: gemmConfig has no field "${key}"`);
    set[key] = raw === 'true' ? true : raw === 'false' ? false : Number(raw);
    if (typeof set[key] === 'number' && !Number.isFinite(set[key]))
      throw new Error(`decode-ab: "${kv}" is not a number`);
  }
  return { name: name!, set, head };
};
const variants = values.variant.map(parseVariant);
const defaults: Config = Object.fromEntries(
  variants.flatMap((v) => Object.keys(v.set)).map((key) => [key, cfg[key]] as const),
);

tierUpSooner(); // as the CLIs run: the warm-up round compiles the decode path
setGemmThreads(Number(values.threads));
const weights = values.dtype as 'f32' | 'bf16' | 'fp8';
const models = new Map(
  [...new Set(variants.map((v) => v.head))].map(
    (headDtype) => [headDtype, loadModel(positionals[0]!, { weights, headDtype })] as const,
  ),
);
const [prefill, decode, rounds, batch] = [values.prefill, values.decode, values.rounds, values.batch].map(Number) as [
  number,
  number,
  number,
  number,
];
// wake-ups of sleeping workers: the calling thread's notifies of the job counter (SEQ, word 0) that woke one
let wakes = 0;
const notify = Atomics.notify;
Atomics.notify = ((a: Int32Array, index: number, count?: number): number => {
  const woken = notify(a, index, count);
  if (index === 0 && woken > 0) wakes++;
  return woken;
}) as typeof Atomics.notify;
const wakesPerRound: number[][] = variants.map(() => []);
// every counted decode step's ms: its 10th percentile and median resist load spikes better than round means
const steps: number[][] = variants.map(() => []);
const ms: number[][] = variants.map(() => []);
const prefillMs: number[][] = variants.map(() => []);
// Process CPU (all threads: caller, GEMM workers, GC) per round: steadier than wall time on a loaded machine.
const cpuMs: number[][] = variants.map(() => []);
const tokens: number[][] = [];
for (let r = 0; r <= rounds; r++) {
  // round 0 warms every variant up (first-touch costs) and is not counted
  // each round starts one variant later (a variant's place in the round is no systematic advantage)
  for (let j = 0; j < variants.length; j++) {
    const i = (j + r) % variants.length;
    const v = variants[i]!;
    Object.assign(cfg, defaults, v.set);
    const c0 = process.cpuUsage();
    const w0 = wakes;
    const res = await benchGeneration(models.get(v.head)!, { prefill, decode, batch });
    const c = process.cpuUsage(c0);
    if (r > 0) cpuMs[i]!.push((c.user + c.system) / 1000);
    if (r > 0) wakesPerRound[i]!.push(wakes - w0);
    if (r > 0) steps[i]!.push(...res.stepMs);
    if (r > 0) ms[i]!.push(1000 / (res.decodeTokS / batch));
    if (r > 0) prefillMs[i]!.push((1000 * batch * prefill) / res.prefillTokS);
    tokens[i] = res.tokens;
  }
}
Object.assign(cfg, defaults);
const median = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
const anchor = median(ms[0]!);
const pct = (a: number[], p: number): number => [...a].sort((x, y) => x - y)[Math.floor(p * (a.length - 1))]!;
for (const [i, v] of variants.entries()) {
  const same = tokens[i]!.every((t, j) => t === tokens[0]![j]);
  console.log(
    `${v.name.padEnd(16)} ${median(ms[i]!).toFixed(2).padStart(7)} ms/step  (${(anchor / median(ms[i]!)).toFixed(2)}x of ${variants[0]!.name})  rounds ${ms[i]!.map((x) => x.toFixed(1)).join(' ')}  tokens ${same ? 'same' : 'DIFFER'}  prefill ${median(prefillMs[i]!).toFixed(0)} ms (${(median(prefillMs[0]!) / median(prefillMs[i]!)).toFixed(2)}x)  CPU/round ${median(cpuMs[i]!).toFixed(0)} ms (${(median(cpuMs[0]!) / median(cpuMs[i]!)).toFixed(2)}x)  wakes/round ${median(wakesPerRound[i]!)}  steps p10 ${pct(steps[i]!, 0.1).toFixed(2)} (${(pct(steps[0]!, 0.1) / pct(steps[i]!, 0.1)).toFixed(3)}x) p50 ${pct(steps[i]!, 0.5).toFixed(2)} (${(pct(steps[0]!, 0.5) / pct(steps[i]!, 0.5)).toFixed(3)}x)`,
  );
}
// Bounded spinning: what the process's threads use while it idles after its last step (Linux:
// per-thread CPU ticks from /proc, so a spinning worker shows apart from GC and compiler threads).
const threadTicks = (): Map<string, number> => {
  const out = new Map<string, number>();
  if (!existsSync('/proc/self/task')) return out;
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(`${name}#${tid}`, Number(f[11]) + Number(f[12])); // utime + stime
    } catch {
      // the thread ended
    }
  }
  return out;
};
const before = process.cpuUsage();
const ticks0 = threadTicks();
await new Promise((r) => setTimeout(r, 1000));
const idle = process.cpuUsage(before);
const busy = [...threadTicks()]
  .map(([t, v]) => [t, v - (ticks0.get(t) ?? 0)] as const)
  .filter(([, d]) => d > 0)
  .map(([t, d]) => `${t.endsWith(`#${process.pid}`) ? 'main' : t} ${d * 10} ms`);
console.log(
  `idle after the last step: ${((idle.user + idle.system) / 1000).toFixed(1)} ms CPU over 1 s (threads: ${busy.join(', ') || 'none'})`,
);
