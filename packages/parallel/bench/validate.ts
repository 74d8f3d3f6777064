// dsv3-plan validated on this machine: predicted vs measured step time of dsv3-train runs of the tiny
// preset at several layouts (1 process; dp=2; ep=2; pp=2 with 1F1B and DualPipe; dp=2,ep=2), each run
// as real processes under dsv3-run (tcp transport). The cluster description is this machine, measured
// first in the same run: GEMM FLOP/s (core's sgemm on every core), memcpy bandwidth, and the tcp
// transport's point-to-point bandwidth and latency between two dsv3-run ranks. The planner's one free
// parameter (the fraction of the GEMM rate the whole step reaches) is calibrated on the 1-process run;
// every other row is a prediction.
//   cd packages/parallel && npx tsx --conditions=@dsv3/source bench/validate.ts [--steps 6] [--seq 64]
//        [--sequences 8] [--layouts all|1,dp2,...] [--json out.json]
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseConfig } from '@dsv3/model';
import {
  calibrateEfficiency,
  describeLayout,
  machineInfo,
  measureGemmFlops,
  measureMemcpy,
  plannerLayout,
  predictionError,
  predictTrainerStep,
  trainerRanks,
  type MachineProbe,
  type TrainerBatch,
  type TrainerLayout,
} from '../src/index.js';
import { PRESET_CONFIGS, PRESET_MODELS } from '../../train/src/presets.js';

const arg = (name: string, def: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
};
const steps = Number(arg('steps', '6'));
const batch: TrainerBatch = {
  sequences: Number(arg('sequences', '8')),
  microBatch: 1,
  seqLen: Number(arg('seq', '64')),
};
const jsonOut = arg('json', '');
const root = fileURLToPath(new URL('../../../', import.meta.url));
const launcher = join(root, 'packages/parallel/src/launcher/cli.ts');
const trainer = join(root, 'apps/trainer/src/cli.ts');
const tsx = ['--import', 'tsx', '--conditions=@dsv3/source'];

const LAYOUTS: Record<string, TrainerLayout> = {
  '1': { dp: 1, pp: 1, ep: 1, schedule: '1f1b', zero1: false },
  dp2: { dp: 2, pp: 1, ep: 1, schedule: '1f1b', zero1: false },
  ep2: { dp: 1, pp: 1, ep: 2, schedule: '1f1b', zero1: false },
  'pp2-1f1b': { dp: 1, pp: 2, ep: 1, schedule: '1f1b', zero1: false },
  'pp2-dualpipe': { dp: 1, pp: 2, ep: 1, schedule: 'dualpipe', zero1: false },
  'dp2-ep2': { dp: 2, pp: 1, ep: 2, schedule: '1f1b', zero1: false },
};
const chosen = arg('layouts', 'all') === 'all' ? Object.keys(LAYOUTS) : arg('layouts', '').split(',');
if (chosen[0] !== '1') throw new Error('--layouts must start with 1 (the calibration run)');

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    c.on('close', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} failed (${code}):\n${out.slice(-4000)}`)),
    );
  });
}

/** Point-to-point bandwidth and latency of the tcp transport between two dsv3-run ranks. */
async function probeTransport(): Promise<{ bandwidth: number; latency: number }> {
  const script = fileURLToPath(new URL('./ranks/p2p-probe.ts', import.meta.url));
  const out = await run(process.execPath, [...tsx, launcher, '--nproc', '2', script]);
  const m = /PROBE (.*)$/m.exec(out);
  if (!m) throw new Error(`the transport probe printed no result:\n${out.slice(-2000)}`);
  return JSON.parse(m[1]!) as { bandwidth: number; latency: number };
}

/** Median step seconds of a dsv3-train run (the first two steps, warm-up, left out). */
async function measure(name: string, t: TrainerLayout): Promise<number> {
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
    await run(process.execPath, ranks > 1 ? [...tsx, launcher, '--nproc', String(ranks), ...args] : [...tsx, ...args]);
    const recs = readFileSync(join(dir, 'run', 'metrics.jsonl'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { kind: string; step: number; tokensPerSec: number; batchSequences: number })
      .filter((r) => r.kind === 'train' && r.step > 2);
    const secs = recs.map((r) => (r.batchSequences * batch.seqLen) / r.tokensPerSec).sort((a, b) => a - b);
    if (!secs.length) throw new Error(`${name}: no steps after warm-up (use --steps 4 or more)`);
    return secs[secs.length >> 1]!;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const model = parseConfig(PRESET_MODELS.tiny);
process.stderr.write('[validate] probing the machine...\n');
const gemmFlops = measureGemmFlops();
const memcpyBandwidth = measureMemcpy();
const transport = await probeTransport();
const probe: MachineProbe = {
  gemmFlops,
  memcpyBandwidth,
  transportBandwidth: transport.bandwidth,
  transportLatency: transport.latency,
  ...machineInfo(),
};
const measured: Record<string, number> = {};
for (const name of chosen) {
  process.stderr.write(`[validate] dsv3-train ${name}...\n`);
  measured[name] = await measure(name, LAYOUTS[name]!);
}
const efficiency = calibrateEfficiency(model, probe, batch, measured['1']!);
const rows = chosen.map((name) => {
  const t = LAYOUTS[name]!;
  const p = predictTrainerStep(model, probe, t, batch, efficiency);
  return {
    name,
    ranks: trainerRanks(t),
    planner: describeLayout(plannerLayout(t)),
    measured: measured[name]!,
    predicted: p.step.total,
    compute: p.step.compute,
    allToAll: p.step.allToAll - p.step.allToAllHidden,
    bubble: p.step.bubble,
    dataParallel: p.step.dataParallel,
    error: predictionError(p.step.total, measured[name]!),
  };
});
const ms = (s: number) => (s * 1e3).toFixed(0);
console.log(
  `tiny preset, ${batch.sequences} sequences of ${batch.seqLen} tokens per step, micro-batch 1; machine: ${probe.cores} cores, ` +
    `sgemm ${(probe.gemmFlops / 1e9).toFixed(1)} GFLOP/s, memcpy ${(probe.memcpyBandwidth / 1e9).toFixed(1)} GB/s, ` +
    `tcp ${(probe.transportBandwidth / 1e9).toFixed(2)} GB/s and ${(probe.transportLatency * 1e6).toFixed(0)} µs one way; ` +
    `efficiency calibrated on 1 process: ${(100 * efficiency).toFixed(1)}% of the sgemm rate`,
);
console.log(
  '| dsv3-train --parallel | ranks | planner layout | measured step (ms) | predicted (ms) | compute / exposed all-to-all / bubble / dp sync (ms) | error |',
);
console.log('|---|---:|---|---:|---:|---|---:|');
for (const r of rows)
  console.log(
    `| ${r.name} | ${r.ranks} | ${r.planner} | ${ms(r.measured)} | ${ms(r.predicted)} | ${ms(r.compute)} / ${ms(Math.max(0, r.allToAll))} / ${ms(r.bubble)} / ${ms(r.dataParallel)} | ${r.name === '1' ? '(calibration)' : `${(100 * r.error).toFixed(0)}%`} |`,
  );
if (jsonOut) writeFileSync(jsonOut, JSON.stringify({ probe, efficiency, batch, rows }, null, 2));
