// docs/experiments.md: the report's training claims reproduced at the tiny preset's scale.
//   npx tsx --conditions=@dsv3/source bench/experiments.ts [fp8|balance|mtp|all] [--steps N] [--batch SEQUENCES]
// Each experiment trains variants of the tiny preset from the same seed on the built-in corpus and
// prints a markdown table.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mtpAcceptance } from './mtp-acceptance.js';
import {
  parseTrainConfig,
  PRESET_CONFIGS,
  readMetrics,
  train,
  type StepRecord,
  type EvalRecord,
  type TrainConfigInput,
} from '../src/index.js';

const args = process.argv.slice(2);
const which = args.find((a) => !a.startsWith('--')) ?? 'all';
const stepsArg = args.indexOf('--steps');
const STEPS = stepsArg >= 0 ? Number(args[stepsArg + 1]) : 80;
// Sequences per step (the tiny preset's 8 by default; the committed results used 4 to fit the machine).
const batchArg = args.indexOf('--batch');
const SEQS = batchArg >= 0 ? Number(args[batchArg + 1]) : 8;
const base = PRESET_CONFIGS.tiny;

interface Outcome {
  name: string;
  trainLoss: number;
  evalLoss: number;
  maxVio: number;
  seconds: number;
  result: Awaited<ReturnType<typeof train>>;
}

async function run(name: string, patch: Partial<TrainConfigInput>): Promise<Outcome> {
  const cfg = parseTrainConfig({
    ...base,
    steps: STEPS,
    batch: { sequences: SEQS, microBatch: 4, seqLen: 128, ramp: null },
    intervals: { log: 1, eval: STEPS, evalBatches: 8, checkpoint: STEPS, keepLast: 1 },
    ...patch,
  });
  const t0 = performance.now();
  const result = await train({ config: cfg, outDir: join(mkdtempSync(join(tmpdir(), 'dsv3-exp-')), 'run') });
  const recs = readMetrics(result.metricsPath);
  const tr = recs.filter((r): r is StepRecord => r.kind === 'train');
  const last = tr.slice(-10);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const ev = recs.filter((r): r is EvalRecord => r.kind === 'eval').at(-1)!;
  const o = {
    name,
    trainLoss: mean(last.map((r) => r.mainLoss)),
    evalLoss: ev.evalLoss,
    maxVio: mean(last.map((r) => r.maxVioMean)),
    seconds: (performance.now() - t0) / 1000,
    result,
  };
  process.stderr.write(
    `${name}: train ${o.trainLoss.toFixed(4)} eval ${o.evalLoss.toFixed(4)} MaxVio ${o.maxVio.toFixed(3)} (${o.seconds.toFixed(0)} s)\n`,
  );
  return o;
}

const f4 = (x: number) => x.toFixed(4);

async function fp8(): Promise<void> {
  const bf16 = await run('bf16', { precision: 'bf16' });
  const fp8r = await run('fp8', { precision: 'fp8' });
  const gap = (a: number, b: number) => `${(((b - a) / a) * 100).toFixed(2)}%`;
  console.log(
    `\n### FP8 vs BF16 (tiny preset, ${STEPS} steps of ${SEQS} x 128 tokens)\n\n| recipe | train CE (last 10 steps) | eval CE | seconds |\n|---|---|---|---|`,
  );
  for (const o of [bf16, fp8r])
    console.log(`| ${o.name} | ${f4(o.trainLoss)} | ${f4(o.evalLoss)} | ${o.seconds.toFixed(0)} |`);
  console.log(
    `\nrelative gap fp8 vs bf16: train ${gap(bf16.trainLoss, fp8r.trainLoss)}, eval ${gap(bf16.evalLoss, fp8r.evalLoss)}`,
  );
}

async function balance(): Promise<void> {
  const outs = [
    await run('aux-loss-free (γ = 0.01)', { balance: { biasUpdateSpeed: 0.01, sequenceAuxAlpha: 0 } }),
    await run('sequence-wise aux loss (α = 0.01)', { balance: { biasUpdateSpeed: 0, sequenceAuxAlpha: 0.01 } }),
    await run('neither', { balance: { biasUpdateSpeed: 0, sequenceAuxAlpha: 0 } }),
  ];
  console.log(
    `\n### Load balancing (tiny preset, ${STEPS} steps of ${SEQS} x 128 tokens)\n\n| balancing | MaxVio (mean over MoE layers, last 10 steps) | train CE | eval CE |\n|---|---|---|---|`,
  );
  for (const o of outs) console.log(`| ${o.name} | ${o.maxVio.toFixed(3)} | ${f4(o.trainLoss)} | ${f4(o.evalLoss)} |`);
}

async function mtp(): Promise<void> {
  const on = await run('MTP depth 1 (λ = 0.3 → 0.1)', {
    mtp: { depth: 1, lambda: 0.3, later: { fromStep: Math.floor(STEPS * 0.7), lambda: 0.1 } },
  });
  const off = await run('no MTP', { mtp: { depth: 0, lambda: 0 } });
  console.log(
    `\n### MTP on vs off (tiny preset, ${STEPS} steps of ${SEQS} x 128 tokens)\n\n| variant | train main CE | eval CE |\n|---|---|---|`,
  );
  for (const o of [on, off]) console.log(`| ${o.name} | ${f4(o.trainLoss)} | ${f4(o.evalLoss)} |`);
  // Acceptance of the trained MTP module's drafts when decoding with it.
  console.log(`\n${await mtpAcceptance(on.result.model, on.result.tokenizer)}`);
}

if (which === 'fp8' || which === 'all') await fp8();
if (which === 'balance' || which === 'all') await balance();
if (which === 'mtp' || which === 'all') await mtp();
