// dsv3-plan validated on this machine: predicted vs measured step time of dsv3-train runs of the tiny
// preset at several layouts (1 process; dp=2; ep=2; pp=2 with 1F1B and DualPipe; dp=2,ep=2), each run
// as real processes under dsv3-run (tcp transport). The cluster description is this machine, measured
// first in the same run: GEMM FLOP/s (core's sgemm on every core), memcpy bandwidth, the fixed cost of
// one small operator, and the tcp transport's point-to-point bandwidth and latency between two dsv3-run
// ranks. The planner's one free parameter (the fraction of the probed rates the whole step reaches) is
// calibrated on the 1-process run; every other row is a prediction. Layouts run interleaved, --repeat
// times; each figure is the median over the repeats of each run's median step.
//   cd packages/parallel && npx tsx --conditions=@dsv3/source bench/validate.ts [--steps 6] [--repeat 3]
//        [--seq 64] [--sequences 8] [--layouts all|1,dp2,...] [--json out.json] [--from out.json]
// --from re-predicts the measurements of an earlier --json file without running anything.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '@dsv3/model';
// A bench-only import: @dsv3/train depends on this package, so it cannot be a dependency of it; the
// workspace resolves it.
import { PRESET_CONFIGS, PRESET_MODELS } from '@dsv3/train';
import {
  calibrateEfficiency,
  describeLayout,
  plannerLayout,
  predictionError,
  predictTrainerStep,
  trainerRanks,
  type MachineProbe,
  type TrainerBatch,
  type TrainerLayout,
} from '../src/index.js';
import { describeProbe, launcher, median, probeMachine, root, runCommand, tsx } from './validate-common.js';

const arg = (name: string, def: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
};
const steps = Number(arg('steps', '6'));
const repeat = Number(arg('repeat', '3'));
const jsonOut = arg('json', '');
const from = arg('from', '');
const trainer = join(root, 'apps/trainer/src/cli.ts');

const LAYOUTS: Record<string, TrainerLayout> = {
  '1': { dp: 1, pp: 1, ep: 1, schedule: '1f1b', zero1: false },
  dp2: { dp: 2, pp: 1, ep: 1, schedule: '1f1b', zero1: false },
  ep2: { dp: 1, pp: 1, ep: 2, schedule: '1f1b', zero1: false },
  'pp2-1f1b': { dp: 1, pp: 2, ep: 1, schedule: '1f1b', zero1: false },
  'pp2-dualpipe': { dp: 1, pp: 2, ep: 1, schedule: 'dualpipe', zero1: false },
  'dp2-ep2': { dp: 2, pp: 1, ep: 2, schedule: '1f1b', zero1: false },
};

interface Measured {
  probe: MachineProbe;
  batch: TrainerBatch;
  /** Each layout's per-run median step (s), one per repeat. */
  runs: Record<string, number[]>;
  loadAverage: number[];
}

/** Median step seconds of a dsv3-train run (the first two steps, warm-up, left out). */
async function measure(name: string, t: TrainerLayout, batch: TrainerBatch): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), `dsv3-validate-${name}-`));
  try {
    const cfg = {
      ...PRESET_CONFIGS.tiny,
      batch: { ...batch, ramp: null },
      intervals: { log: 1, eval: 1_000_000, evalBatches: 1, checkpoint: 1_000_000, keepLast: 1 },
      steps,
    };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
    const args = [trainer, '--config', join(dir, 'config.json'), '--steps', String(steps), '--out', join(dir, 'run')];
    args.push('--no-progress');
    if (trainerRanks(t) > 1)
      args.push('--parallel', `dp=${t.dp},pp=${t.pp},ep=${t.ep}`, ...(t.pp > 1 ? ['--pp-schedule', t.schedule] : []));
    const ranks = trainerRanks(t);
    await runCommand(
      process.execPath,
      ranks > 1 ? [...tsx, launcher, '--nproc', String(ranks), ...args] : [...tsx, ...args],
      root,
    );
    const recs = readFileSync(join(dir, 'run', 'metrics.jsonl'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { kind: string; step: number; tokensPerSec: number; batchSequences: number })
      .filter((r) => r.kind === 'train' && r.step > 2);
    if (!recs.length) throw new Error(`${name}: no steps after warm-up (use --steps 4 or more)`);
    return median(recs.map((r) => (r.batchSequences * batch.seqLen) / r.tokensPerSec));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function measureAll(): Promise<Measured> {
  const batch: TrainerBatch = {
    sequences: Number(arg('sequences', '8')),
    microBatch: 1,
    seqLen: Number(arg('seq', '64')),
  };
  const chosen = arg('layouts', 'all') === 'all' ? Object.keys(LAYOUTS) : arg('layouts', '').split(',');
  if (chosen[0] !== '1') throw new Error('--layouts must start with 1 (the calibration run)');
  process.stderr.write('[validate] probing the machine...\n');
  const loads = [loadavg()[0]!];
  const probe = await probeMachine();
  const runs: Record<string, number[]> = Object.fromEntries(chosen.map((n) => [n, []]));
  for (let r = 0; r < repeat; r++)
    for (const name of chosen) {
      process.stderr.write(`[validate] round ${r + 1}/${repeat}: dsv3-train ${name}...\n`);
      runs[name]!.push(await measure(name, LAYOUTS[name]!, batch));
      loads.push(loadavg()[0]!);
    }
  return { probe, batch, runs, loadAverage: loads };
}

const m: Measured = from ? (JSON.parse(readFileSync(from, 'utf8')) as Measured) : await measureAll();
const { probe, batch } = m;
const model = parseConfig(PRESET_MODELS.tiny);
const mtpDepth = PRESET_CONFIGS.tiny.mtp?.depth ?? 0;
const measured = Object.fromEntries(Object.entries(m.runs).map(([k, v]) => [k, median(v)]));
const efficiency = calibrateEfficiency(model, probe, batch, measured['1']!, mtpDepth);
const rows = Object.keys(m.runs).map((name) => {
  const t = LAYOUTS[name]!;
  const p = predictTrainerStep(model, probe, t, batch, efficiency, mtpDepth);
  return {
    name,
    ranks: trainerRanks(t),
    planner: describeLayout(plannerLayout(t)),
    measured: measured[name]!,
    runs: m.runs[name]!,
    predicted: p.step.total,
    compute: p.step.compute,
    fixed: p.step.fixed,
    allToAll: p.step.allToAll - p.step.allToAllHidden,
    bubble: p.step.bubble,
    dataParallel: p.step.dataParallel,
    optimizer: p.step.optimizer,
    error: predictionError(p.step.total, measured[name]!),
  };
});
const ms = (s: number) => (s * 1e3).toFixed(0);
const loads = m.loadAverage;
console.log(
  `tiny preset (MTP depth ${mtpDepth}), ${batch.sequences} sequences of ${batch.seqLen} tokens per step, micro-batch 1; machine: ${describeProbe(probe)}; ` +
    `efficiency calibrated on 1 process: ${(100 * efficiency).toFixed(1)}% of the probed rates; ` +
    `load average ${Math.min(...loads).toFixed(1)}–${Math.max(...loads).toFixed(1)}; ${m.runs['1']!.length} runs of each layout`,
);
console.log(
  '| dsv3-train --parallel | ranks | planner layout | measured step (ms), runs | predicted (ms) | compute / fixed / exposed all-to-all / bubble / dp sync / optimizer (ms) | error |',
);
console.log('|---|---:|---|---:|---:|---|---:|');
for (const r of rows)
  console.log(
    `| ${r.name} | ${r.ranks} | ${r.planner} | ${ms(r.measured)} (${r.runs.map(ms).join(', ')}) | ${ms(r.predicted)} | ${[r.compute, r.fixed, Math.max(0, r.allToAll), r.bubble, r.dataParallel, r.optimizer].map(ms).join(' / ')} | ${r.name === '1' ? '(calibration)' : `${(100 * r.error).toFixed(0)}%`} |`,
  );
if (jsonOut) writeFileSync(jsonOut, JSON.stringify({ ...m, efficiency, rows }, null, 2));
