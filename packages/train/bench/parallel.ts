// Parallel training benchmark (tiny or mini preset, f32, worker-thread ranks over the local transport):
// tokens/s at 1, 2, 4 and 8 ranks (data × expert and pipeline layouts; scaling efficiency against 1 rank
// measured in the same run) with the parameter bytes a rank holds; the expert-parallel all-to-all
// overlap with the shared expert on vs off (interleaved); DualPipe's FB overlap (a forward and a backward
// chunk concurrently) on vs off, with the exposed EP wait per rank (interleaved); each schedule's pipeline bubble on the tiny
// model, measured vs the simulator fed the measured op durations; flat vs two-hop dispatch.
// Usage: npx tsx --conditions=@dsv3/source bench/parallel.ts [--preset tiny|mini] [--steps 3] [--warmup 1] [--seq-len 64] [--sequences 16]
//        [--sections scaling,overlap,bubble,hops] [--layouts 'dp=1;pp=2'] [--anchor tok/s] [--rounds 2] [--malloc reuse|default]
//        [--warmup-sequences N|min] (mini's default: min, one micro-batch per data-parallel rank) [--checkpoint DIR]
//        [--overlap-layout L] [--fb-layout pp=2,ep=2] [--fb-schedule dualpipe|dualpipev] [--fb-first-dense 0]
// The scaling section prints the planner's prediction beside each layout (calibrated on the 1-rank run).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { parseConfig } from '@dsv3/model';
import {
  buildSchedule,
  calibrateEfficiency,
  launchLocal,
  ParallelLayout,
  predictTrainerStep,
  SCHEDULE_KINDS,
  simulate,
  type ScheduleKind,
} from '@dsv3/parallel';
// the planner's probe of this machine (GEMM rate, memcpy, operator cost, transport), as bench:validate uses it
import { describeProbe, probeMachine } from '../../parallel/bench/validate-common.js';
import { PRESET_MODELS } from '../src/index.js';

// glibc hands every buffer over 32 MiB back to the kernel on free, so each new one faults its pages in
// again: ~3 s of CPU per 512 MiB on this VM (22 µs a 4 KiB page), and a mini step makes dozens (the
// 129,280-row embedding and head gradients of every micro-batch, AdamW's moment buffers). Run the ranks
// with one malloc arena that never maps or trims memory, so freed buffers are reused (--malloc default:
// the process as started).
const TUNABLES = 'glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=68719476736';
const mallocArg = process.argv.indexOf('--malloc');
if (process.argv[mallocArg + 1] !== 'default' && !process.env.GLIBC_TUNABLES) {
  const r = spawnSync(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, GLIBC_TUNABLES: TUNABLES },
  });
  process.exit(r.status ?? 1);
}

const arg = (name: string, def: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
};
const opt = (name: string, def: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
};
const presetArg = process.argv.indexOf('--preset');
const preset = presetArg >= 0 ? process.argv[presetArg + 1]! : 'tiny';
if (preset !== 'tiny' && preset !== 'mini') throw new Error(`--preset: tiny or mini, got ${preset}`);
// --sections scaling,overlap,fb-overlap,bubble,hops (default: all)
const sectionsArg = process.argv.indexOf('--sections');
const sections = new Set(
  sectionsArg >= 0 ? process.argv[sectionsArg + 1]!.split(',') : ['scaling', 'overlap', 'fb-overlap', 'bubble', 'hops'],
);
const script = fileURLToPath(new URL('./parallel-rank.ts', import.meta.url));
const base = {
  PRESET: preset,
  STEPS: String(arg('steps', 3)),
  SEQ_LEN: String(arg('seq-len', 64)),
  SEQUENCES: String(arg('sequences', 16)),
  WARMUP: String(arg('warmup', 1)),
  // --checkpoint DIR: the ranks read their shards of a checkpoint of the preset's shape instead of drawing them
  CHECKPOINT: opt('checkpoint', ''),
  // --warmup-sequences N, or 'min' (the default for mini: one micro-batch per data-parallel rank)
  WARMUP_SEQUENCES: opt('warmup-sequences', preset === 'mini' ? 'min' : String(arg('sequences', 16))),
};
const rounds = arg('rounds', 2);

interface Measured {
  tokensPerSec: number;
  /** Seconds of the slowest rank's model build + set-up, and of its warm-up steps. */
  buildSecs: number;
  warmupSecs: number;
  commWaitMs: number;
  /** Per rank: milliseconds of the timed steps with every stream waiting for an EP all-to-all. */
  exposedWaitMs: number[];
  /** Largest parameter bytes one rank holds. */
  heldBytes: number;
  /** Peak RSS of the process (all worker-thread ranks together). */
  peakRssBytes: number;
  /** EP bytes sent to other nodes' ranks, all ranks together, per timed step. */
  crossNodeBytes: number;
  /** Each rank's last pipeline pass (pp > 1). */
  pipelines: (Pipeline | undefined)[];
}

interface Pipeline {
  start: number;
  end: number;
  trace: { index: number; kind: string; deferW: boolean; start: number; end: number }[];
}

async function measure(nproc: number, env: Record<string, string>): Promise<Measured> {
  const sink = new PassThrough();
  sink.resume();
  const { CHECKPOINT, ...rest } = base;
  const all = { ...rest, ...(CHECKPOINT && { CHECKPOINT }), ...env };
  const res = await launchLocal({ nproc, script, env: all, stdout: sink, stderr: sink });
  const bad = res.find((r) => r.error || r.exitCode !== 0);
  if (bad) throw new Error(`rank ${bad.rank} failed: ${bad.error?.message ?? bad.exitCode}`);
  const rs = res.map(
    (r) => r.result as Omit<Measured, 'pipelines' | 'exposedWaitMs'> & { pipeline?: Pipeline; exposedWaitMs: number },
  );
  return {
    tokensPerSec: rs[0]!.tokensPerSec,
    buildSecs: Math.max(...rs.map((r) => r.buildSecs)),
    warmupSecs: Math.max(...rs.map((r) => r.warmupSecs)),
    commWaitMs: rs.reduce((a, r) => a + r.commWaitMs, 0) / rs.length,
    exposedWaitMs: rs.map((r) => r.exposedWaitMs),
    heldBytes: Math.max(...rs.map((r) => r.heldBytes)),
    peakRssBytes: Math.max(...rs.map((r) => r.peakRssBytes)),
    crossNodeBytes: rs.reduce((a, r) => a + r.crossNodeBytes, 0) / Number(base.STEPS),
    pipelines: rs.map((r) => r.pipeline),
  };
}

/** Measured bubble (1 − mean busy / makespan) and the simulator's, fed each op's measured duration. */
function bubble(kind: (typeof SCHEDULE_KINDS)[number], ps: Pipeline[], chunks: number) {
  const t0 = Math.min(...ps.map((p) => p.start));
  const makespan = Math.max(...ps.map((p) => p.end)) - t0;
  const busy = ps.map((p) => p.trace.reduce((a, t) => a + t.end - t.start, 0));
  const measured = 1 - busy.reduce((a, b) => a + b, 0) / busy.length / makespan;
  const cost = ps.map((p) => new Map(p.trace.map((t) => [t.index, t.end - t.start])));
  const schedule = buildSchedule(kind, { ranks: ps.length, chunks });
  const sim = simulate(schedule, { F: 1, B: 1, W: 1, FB: 2, costOf: (rank, i) => cost[rank]!.get(i)! });
  return { measured, simulated: sim.bubbleFraction, makespan };
}

const MB = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;
// Per rank count, a data × expert layout and one with a pipeline (its schedule).
const tinyLayouts: [number, string, Record<string, string>][] = [
  [1, 'dp=1', {}],
  [2, 'ep=2', {}],
  [2, 'pp=2', { SCHEDULE: '1f1b' }],
  [4, 'dp=2,ep=2', {}],
  [4, 'pp=2,ep=2', { SCHEDULE: 'dualpipe' }],
  [8, 'dp=2,ep=4', {}],
  [8, 'dp=2,pp=2,ep=2', { SCHEDULE: 'dualpipe' }],
];
// mini: the layouts whose parameter state fits the machine's 24 GiB (bench/mini-fit.ts)
const miniLayouts: [number, string, Record<string, string>][] = [
  [1, 'dp=1', {}],
  [2, 'ep=2', {}],
  [2, 'pp=2', { SCHEDULE: '1f1b' }],
  [4, 'pp=4', { SCHEDULE: '1f1b' }],
  [4, 'pp=2,ep=2', { SCHEDULE: '1f1b' }],
  [8, 'pp=8', { SCHEDULE: '1f1b' }],
  [8, 'pp=4,ep=2', { SCHEDULE: '1f1b' }],
];
// --layouts 'dp=1;pp=2;pp=4' runs only those of the preset's layouts
const layoutsArg = process.argv.indexOf('--layouts');
const only = layoutsArg >= 0 ? new Set(process.argv[layoutsArg + 1]!.split(';')) : null;
const layouts = (preset === 'mini' ? miniLayouts : tinyLayouts).filter(([, p]) => !only || only.has(p));
const GiB = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
console.log(
  `${preset} preset, f32, ${base.SEQUENCES} x ${base.SEQ_LEN} tokens per step, ${base.WARMUP} warm-up (${base.WARMUP_SEQUENCES} sequences) + ${base.STEPS} timed steps, weights ${base.CHECKPOINT || 'drawn from seed 1'}, malloc: ${process.env.GLIBC_TUNABLES ?? 'as started'}`,
);
// The planner's prediction beside each measurement: its GEMM efficiency calibrated on the 1-rank run
// (bench:validate's method), then each layout's step on this machine's probe.
const model = parseConfig({ ...PRESET_MODELS[preset] });
const batch = { sequences: Number(base.SEQUENCES), microBatch: 1, seqLen: Number(base.SEQ_LEN) };
const tokens = batch.sequences * batch.seqLen;
const probe = sections.has('scaling') ? await probeMachine() : null;
if (probe) console.log(`probe: ${describeProbe(probe)}`);
// --anchor T: the 1-rank tokens/s of an earlier invocation (when --layouts leaves dp=1 out)
let one = arg('anchor', 0);
let efficiency = one > 0 && probe ? calibrateEfficiency(model, probe, batch, tokens / one, 1) : 1;
for (const [n, p, env] of sections.has('scaling') ? layouts : []) {
  const r = await measure(n, { PARALLEL: p, ...env });
  if (n === 1) {
    one = r.tokensPerSec;
    efficiency = calibrateEfficiency(model, probe!, batch, tokens / one, 1);
  }
  const d = ParallelLayout.parse(p).dims;
  const t = { dp: d.dp, pp: d.pp, ep: d.ep, schedule: (env.SCHEDULE ?? '1f1b') as ScheduleKind, zero1: false };
  const predicted = tokens / predictTrainerStep(model, probe!, t, batch, efficiency, 1).step.total;
  console.log(
    `${String(n).padStart(2)} ranks ${`${p} ${env.SCHEDULE ?? ''}`.padEnd(24)} ${r.tokensPerSec.toFixed(1).padStart(8)} tok/s   x${(r.tokensPerSec / one).toFixed(2)} (efficiency ${((r.tokensPerSec / one / n) * 100).toFixed(0)}%)   planner ${predicted.toFixed(1)} tok/s (x${(predicted / one).toFixed(2)})   EP comm wait ${r.commWaitMs.toFixed(0)} ms/rank   parameters held ${MB(r.heldBytes)} per rank   process peak RSS ${GiB(r.peakRssBytes)}   build ${r.buildSecs.toFixed(0)} s, warm-up ${r.warmupSecs.toFixed(0)} s`,
  );
}
// tiny: 4 EP ranks; mini: 2 (what fits), or --overlap-layout L (a layout with ep > 1; pipelines run 1F1B)
const overlapLayout = opt('overlap-layout', preset === 'mini' ? 'ep=2' : 'dp=1,ep=4');
const overlapRanks = ParallelLayout.parse(overlapLayout).worldSize;
console.log(`overlap of dispatch with the shared expert, ${overlapLayout} (interleaved, ${rounds} rounds):`);
for (let round = 0; round < (sections.has('overlap') ? rounds : 0); round++) {
  for (const overlap of ['1', '0']) {
    const r = await measure(overlapRanks, { PARALLEL: overlapLayout, OVERLAP: overlap });
    console.log(
      `  round ${round + 1} overlap ${overlap === '1' ? 'on ' : 'off'}  ${r.tokensPerSec.toFixed(1).padStart(8)} tok/s   EP comm wait ${r.commWaitMs.toFixed(0)} ms/rank`,
    );
  }
}
// DualPipe's FB pairs: forward and backward concurrently (each stream's all-to-alls on its own groups) vs
// back to back; rounds alternate which goes first. --fb-first-dense 0 makes every layer MoE (the tiny
// preset's layer 0 is dense, so on pp=2 only one of a rank's two stages communicates).
const fbLayout = opt('fb-layout', 'pp=2,ep=2');
const fbSchedule = opt('fb-schedule', 'dualpipe');
const fbFirstDense = opt('fb-first-dense', '');
const fbRanks = ParallelLayout.parse(fbLayout).worldSize;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fbRuns: Record<string, { stepMs: number[]; exposed: number[] }> = {
  on: { stepMs: [], exposed: [] },
  off: { stepMs: [], exposed: [] },
};
if (sections.has('fb-overlap'))
  console.log(
    `FB overlap (${fbSchedule}, ${fbLayout}${fbFirstDense ? `, first_k_dense_replace ${fbFirstDense}` : ''}; interleaved, ${rounds} rounds; EP wait = time with every stream waiting for an all-to-all, per step):`,
  );
for (let round = 0; round < (sections.has('fb-overlap') ? rounds : 0); round++) {
  for (const fb of round % 2 === 0 ? ['1', '0'] : ['0', '1']) {
    const r = await measure(fbRanks, {
      PARALLEL: fbLayout,
      SCHEDULE: fbSchedule,
      FB_OVERLAP: fb,
      ...(fbFirstDense && { FIRST_DENSE: fbFirstDense }),
    });
    const steps = Number(base.STEPS);
    const stepMs = (Number(base.SEQUENCES) * Number(base.SEQ_LEN) * 1000) / r.tokensPerSec;
    const perStep = r.exposedWaitMs.map((w) => w / steps);
    const mode = fb === '1' ? 'on' : 'off';
    fbRuns[mode]!.stepMs.push(stepMs);
    fbRuns[mode]!.exposed.push(perStep.reduce((a, b) => a + b, 0) / perStep.length);
    console.log(
      `  round ${round + 1} FB overlap ${mode.padEnd(3)}  ${r.tokensPerSec.toFixed(1).padStart(8)} tok/s   step ${stepMs.toFixed(0)} ms   EP wait per rank ${perStep.map((w) => w.toFixed(0)).join(' / ')} ms (mean ${fbRuns[mode]!.exposed.at(-1)!.toFixed(0)})`,
    );
  }
}
if (sections.has('fb-overlap') && rounds > 0) {
  const m = (k: 'on' | 'off') => ({ step: median(fbRuns[k]!.stepMs), wait: median(fbRuns[k]!.exposed) });
  const on = m('on');
  const off = m('off');
  console.log(
    `  medians: step ${on.step.toFixed(0)} ms on vs ${off.step.toFixed(0)} ms off (x${(off.step / on.step).toFixed(2)}), EP wait ${on.wait.toFixed(0)} vs ${off.wait.toFixed(0)} ms per rank per step`,
  );
}
const chunks = Number(base.SEQUENCES);
console.log(`pipeline bubble of the tiny model on pp=2 (${chunks} micro-batches of 1 sequence), last timed step:`);
for (const kind of sections.has('bubble') ? SCHEDULE_KINDS : []) {
  const r = await measure(2, { PARALLEL: 'pp=2', SCHEDULE: kind });
  const b = bubble(kind, r.pipelines as Pipeline[], chunks);
  console.log(
    `  ${kind.padEnd(9)} pipeline pass ${b.makespan.toFixed(0).padStart(6)} ms   bubble measured ${(b.measured * 100).toFixed(1)}%   simulated (per-op measured costs) ${(b.simulated * 100).toFixed(1)}%`,
  );
}
console.log(`ep=4 as 2 nodes of 2: flat vs two-hop dispatch (interleaved, ${rounds} rounds):`);
for (let round = 0; round < (sections.has('hops') ? rounds : 0); round++) {
  for (const hops of ['flat', 'two-hop']) {
    const env: Record<string, string> = { PARALLEL: 'ep=4', ...(hops === 'two-hop' && { RANKS_PER_NODE: '2' }) };
    // the flat run counts its cross-node bytes with the same node split (the layout's nodes only label ranks)
    const r = await measure(4, hops === 'flat' ? { ...env, RANKS_PER_NODE: '2', FLAT: '1' } : env);
    console.log(
      `  round ${round + 1} ${hops.padEnd(7)} ${r.tokensPerSec.toFixed(1).padStart(8)} tok/s   cross-node EP bytes ${MB(r.crossNodeBytes)} per step`,
    );
  }
}
