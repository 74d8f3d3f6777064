// Planner validation on this machine: predicted vs measured training step time of a preset split into
// pipeline stages, on 1 and 2 worker-thread ranks (the runtime's local transport), every schedule.
// The cluster description is this machine, measured in the same run: one core's f32 GEMM FLOP/s and
// the local transport's point-to-point bandwidth.
// Usage: tsx --conditions=@dsv3/source bench/validate.ts [--preset tiny-v3] [--seq 64] [--chunks 4] [--reps 2]
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { matmul, randn } from '@dsv3/core';
import { presetConfig, type PresetName } from '@dsv3/model';
import {
  launchLocal,
  parseCluster,
  planTraining,
  scheduleError,
  SCHEDULE_KINDS,
  type ScheduleKind,
} from '../src/index.js';
import { setGemmThreads } from '../../core/src/cpu/gemm/index.js';

const arg = (name: string, def: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
};
const preset = arg('preset', 'tiny-v3') as PresetName;
const seq = Number(arg('seq', '64'));
const chunks = Number(arg('chunks', '4'));
const reps = Number(arg('reps', '2'));
const script = fileURLToPath(new URL('./ranks/model-step.ts', import.meta.url));

function gemmFlops(): number {
  setGemmThreads(1);
  const a = randn([256, 512], { seed: 1 });
  const b = randn([512, 512], { seed: 2 });
  matmul(a, b).dataSync();
  const t0 = performance.now();
  const n = 20;
  for (let i = 0; i < n; i++) matmul(a, b).dataSync();
  return (n * 2 * 256 * 512 * 512) / ((performance.now() - t0) / 1e3);
}

async function measure(kind: ScheduleKind, nproc: number): Promise<{ wall: number; compute: number }> {
  const sink = new PassThrough();
  let text = '';
  sink.on('data', (d) => (text += d));
  const res = await launchLocal({
    nproc,
    script,
    args: [preset, kind, String(chunks), String(seq), String(reps)],
    timeoutMs: 900_000,
    stdout: sink,
    stderr: sink,
  });
  for (const r of res) if (r.error || r.exitCode !== 0) throw new Error(`rank ${r.rank}: ${r.error?.message}\n${text}`);
  const per = res.map((r) => (r.result as { steps: { wall: number; compute: number }[] }).steps);
  // Fastest repetition; its wall time is the same on every rank (barriers), compute is the busiest rank's.
  let best = { wall: Infinity, compute: 0 };
  for (let i = 0; i < per[0]!.length; i++) {
    const wall = Math.max(...per.map((p) => p[i]!.wall));
    if (wall < best.wall) best = { wall, compute: Math.max(...per.map((p) => p[i]!.compute)) };
  }
  return best;
}

const flops = gemmFlops();
const c = presetConfig(preset);
const machine = (efficiency: number) =>
  parseCluster({
    name: 'this machine',
    gpusPerNode: 2,
    flops: { bf16: flops, fp8: flops },
    hbmBytes: 24e9,
    hbmBandwidth: 10e9,
    nvlinkBandwidth: 2e9,
    ibBandwidth: 2e9,
    sms: 1,
    commSms: 0,
    computeEfficiency: efficiency,
    gemmPrecision: 'bf16',
  });
const predict = (kind: ScheduleKind, pp: number, efficiency: number): number =>
  planTraining(
    { ...c, numNextnPredictLayers: 0 },
    machine(efficiency),
    { dp: 1, pp, ep: 1, tp: 1, schedule: kind, zero1: false },
    { seqLen: seq, globalBatch: chunks, microBatch: 1, maxNodesPerToken: null },
  ).step.total * 1e3;

console.error(`one core's f32 GEMM: ${(flops / 1e9).toFixed(1)} GFLOP/s`);
const single = await measure('1f1b', 1);
// Calibrate the planner's one free parameter (fraction of GEMM FLOP/s reached) on the 1-rank run.
const calibrated = predict('1f1b', 1, 1) / single.wall;
const rows: string[] = [
  `| 1f1b | 1 | ${single.wall.toFixed(0)} | ${predict('1f1b', 1, 1).toFixed(0)} | ${(predict('1f1b', 1, calibrated)).toFixed(0)} | (calibration) |`,
];
for (const kind of SCHEDULE_KINDS) {
  if (scheduleError(kind, { ranks: 2, chunks })) continue;
  const m = await measure(kind, 2);
  const raw = predict(kind, 2, 1);
  const cal = predict(kind, 2, calibrated);
  rows.push(
    `| ${kind} | 2 | ${m.wall.toFixed(0)} | ${raw.toFixed(0)} | ${cal.toFixed(0)} | ${(100 * (cal / m.wall - 1)).toFixed(0)}% |`,
  );
  console.error(rows[rows.length - 1]);
}
console.log(
  `${preset}, seq ${seq}, ${chunks} micro-batches of 1 sequence; one core's f32 GEMM ${(flops / 1e9).toFixed(1)} GFLOP/s; calibrated efficiency ${(100 * calibrated).toFixed(1)}%`,
);
console.log(
  '| schedule | ranks | measured step (ms) | predicted at GEMM peak (ms) | predicted, calibrated on 1 rank (ms) | error of calibrated |',
);
console.log('|---|---:|---:|---:|---:|---:|');
for (const r of rows) console.log(r);
