// Where a decode step's time goes, per weight storage: loads one model per --dtypes entry, runs their
// greedy decodes interleaved (so load swings hit all alike), and prints per dtype the median ms/step,
// the process CPU per round, every step's ms (median over rounds, in groups of 8), and the calling
// thread's CPU profile of the decode steps, prefill excluded (inspector, self time by function, top
// --top) over the counted rounds; with --inclusive also the inclusive time by function (each function
// counted once per sample: what it and everything it called took). Writes OUT-<dtype>.cpuprofile (the
// last round) for DevTools.
// usage: tsx --conditions=@dsv3/source bench/decode-profile.ts CKPT_DIR [--dtypes bf16,fp8] [--threads 2]
//        [--prefill 16] [--decode 32] [--rounds 4] [--top 20] [--inclusive] [--out /tmp/decode]
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { parseArgs } from 'node:util';
import { setGemmThreads } from '@dsv3/core';
import { benchGeneration } from '../src/bench.js';
import { loadModel } from '../src/loader.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    dtypes: { type: 'string', default: 'bf16,fp8' },
    threads: { type: 'string', default: '2' },
    prefill: { type: 'string', default: '16' },
    decode: { type: 'string', default: '32' },
    rounds: { type: 'string', default: '4' },
    top: { type: 'string', default: '20' },
    inclusive: { type: 'boolean', default: false },
    out: { type: 'string', default: '/tmp/decode' },
  },
});
if (positionals.length !== 1) throw new Error('usage: decode-profile.ts CKPT_DIR [--dtypes bf16,fp8] ...');
setGemmThreads(Number(values.threads));
const dtypes = values.dtypes.split(',') as ('f32' | 'bf16' | 'fp8')[];
const models = dtypes.map((weights) => loadModel(positionals[0]!, { weights }));
const [prefill, decode, rounds, top] = [values.prefill, values.decode, values.rounds, values.top].map(Number) as [
  number,
  number,
  number,
  number,
];

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}
const session = new Session();
session.connect();
await session.post('Profiler.enable');
await session.post('Profiler.setSamplingInterval', { interval: 200 });
const selfMs = dtypes.map(() => new Map<string, number>());
const inclMs = dtypes.map(() => new Map<string, number>());
const stepMs: number[][] = dtypes.map(() => []);
const cpuMs: number[][] = dtypes.map(() => []);
const eachStep: number[][][] = dtypes.map(() => []);
const tokens: number[][] = [];
for (let r = 0; r <= rounds; r++) {
  for (const [i, model] of models.entries()) {
    // round 0 warms up and is not counted; the profile covers the decode steps only (not the prefill)
    let c0 = process.cpuUsage();
    const res = await benchGeneration(model, {
      prefill,
      decode,
      afterPrefill: async () => {
        if (r > 0) await session.post('Profiler.start');
        c0 = process.cpuUsage();
      },
    });
    const c = process.cpuUsage(c0);
    tokens[i] = res.tokens;
    if (r === 0) continue;
    const { profile } = (await session.post('Profiler.stop')) as unknown as { profile: Profile };
    if (r === rounds) writeFileSync(`${values.out}-${dtypes[i]}.cpuprofile`, JSON.stringify(profile));
    stepMs[i]!.push(1000 / res.decodeTokS);
    eachStep[i]!.push(res.stepMs);
    cpuMs[i]!.push((c.user + c.system) / 1000);
    const byId = new Map(profile.nodes.map((n) => [n.id, n] as const));
    const parent = new Map<number, number>();
    for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    const nameOf = (id: number): string => {
      const f = byId.get(id)!.callFrame;
      // (tsx's output can put a module on one line: the column tells its functions apart)
      return `${f.functionName || '(anon)'} ${f.url.split('/').slice(-2).join('/')}:${f.lineNumber + 1}:${f.columnNumber + 1}`;
    };
    const add = (m: Map<string, number>, name: string, ms: number): void => {
      m.set(name, (m.get(name) ?? 0) + ms);
    };
    profile.samples.forEach((id, s) => {
      const ms = profile.timeDeltas[s]! / 1000 / rounds;
      add(selfMs[i]!, nameOf(id), ms);
      if (!values.inclusive) return;
      const seen = new Set<string>();
      for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) seen.add(nameOf(at));
      for (const name of seen) add(inclMs[i]!, name, ms);
    });
  }
}
session.disconnect();
const median = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
for (const [i, d] of dtypes.entries()) {
  const same = tokens[i]!.every((t, j) => t === tokens[0]![j]);
  console.log(
    `${d}: ${median(stepMs[i]!).toFixed(2)} ms/step (rounds ${stepMs[i]!.map((x) => x.toFixed(1)).join(' ')}), process CPU/round ${median(cpuMs[i]!).toFixed(0)} ms, tokens ${same ? 'same as' : 'differ from'} ${dtypes[0]}`,
  );
  // every step's median over the rounds, as means of groups of 8 steps: a drift with the context's length,
  // slow first steps or pauses show here
  const perStep = Array.from({ length: decode }, (_, s) => median(eachStep[i]!.map((steps) => steps[s]!)));
  const groups: string[] = [];
  for (let s = 0; s < decode; s += 8) {
    const g = perStep.slice(s, s + 8);
    groups.push(`${s}-${s + g.length - 1}: ${(g.reduce((a, b) => a + b, 0) / g.length).toFixed(1)}`);
  }
  console.log(`  ms/step by step (median over rounds, mean per 8 steps): ${groups.join('  ')}`);
  console.log(
    `  slowest steps: ${perStep
      .map((ms, s) => [ms, s] as const)
      .sort((a, b) => b[0] - a[0])
      .slice(0, 5)
      .map(([ms, s]) => `#${s} ${ms.toFixed(1)}`)
      .join(' ')}`,
  );
  // (the greedy tokens themselves, to compare builds run in separate processes)
  console.log(`  tokens ${tokens[i]!.join(',')}`);
  const total = [...selfMs[i]!.values()].reduce((a, b) => a + b, 0);
  console.log(
    `  calling thread, self ms per round (${decode} decode steps after a prefill of ${prefill}; ${total.toFixed(0)} ms sampled in all):`,
  );
  for (const [name, ms] of [...selfMs[i]!].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`  ${ms.toFixed(1).padStart(8)}  ${name}`);
  if (!values.inclusive) continue;
  console.log('  calling thread, inclusive ms per round:');
  for (const [name, ms] of [...inclMs[i]!].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`  ${ms.toFixed(1).padStart(8)}  ${name}`);
}
