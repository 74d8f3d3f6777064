// One rank of the parallel-training benchmark: the PRESET (tiny or mini, f32; or the weights of CHECKPOINT) on the layout in PARALLEL (nodes of
// RANKS_PER_NODE ranks: two-hop dispatch), WARMUP untimed steps (of WARMUP_SEQUENCES) then STEPS timed ones; reports tokens/s,
// how long dispatch was waited for, the parameter bytes this rank holds and the bytes it sent to other
// nodes' ranks in EP all-to-alls.
import { Rng } from '@dsv3/core';
import { parseConfig } from '@dsv3/model';
import {
  exposedCommWaitMs,
  initProcessGroup,
  ParallelLayout,
  reportResult,
  resetExposedCommWait,
  type ScheduleKind,
} from '@dsv3/parallel';
import { PRESET_MODELS, type TrainPreset } from '../src/index.js';
import {
  heldParameterBytes,
  initRankModel,
  loadRankModel,
  parallelTrainStep,
  setupParallel,
} from '../src/parallel/index.js';

const env = process.env;
const world = await initProcessGroup({ timeoutMs: 600_000 });
const layout = ParallelLayout.parse(
  env.PARALLEL!,
  env.RANKS_PER_NODE ? { ranksPerNode: Number(env.RANKS_PER_NODE) } : {},
);
const schedule = (env.SCHEDULE ?? '1f1b') as ScheduleKind;
const preset = (env.PRESET ?? 'tiny') as TrainPreset;
const built0 = performance.now();
// only this rank's shards are built (fresh from seed 1), or read from CHECKPOINT (a checkpoint of the preset's
// shape: a fresh mini build draws 646M values, ~1 CPU-minute; reading them takes seconds)
const shards = { layout, rank: world.rank, schedule };
// FIRST_DENSE=0: every layer a MoE layer (so every pipeline stage communicates)
const firstDense = env.FIRST_DENSE ? { first_k_dense_replace: Number(env.FIRST_DENSE) } : {};
const model = env.CHECKPOINT
  ? loadRankModel(env.CHECKPOINT, shards)
  : initRankModel(parseConfig({ ...PRESET_MODELS[preset], ...firstDense }), { seed: 1 }, shards).model;
model.train();
const all = model.parameters();
const groups = [
  { params: all.filter((p) => p.value.ndim >= 2), weightDecay: 0.1 },
  { params: all.filter((p) => p.value.ndim < 2), weightDecay: 0 },
];
const run = setupParallel({
  world,
  layout,
  model,
  paramGroups: groups,
  optimizer: { betas: [0.9, 0.95], eps: 1e-8, momentDType: 'bf16' },
  zero1: env.ZERO === '1',
  schedule,
  // FLAT=1: one flat all-to-all even when the layout's EP group spans nodes (to compare with the two hops)
  expertParallel: { overlap: env.OVERLAP !== '0', ...(env.FLAT === '1' && { hierarchical: undefined }) },
  // FB_OVERLAP=0: DualPipe's FB pairs run forward then backward instead of concurrently
  overlapForwardBackward: env.FB_OVERLAP !== '0',
});
const seqLen = Number(env.SEQ_LEN ?? 64);
const vocab = Math.min(model.config.vocabSize, 256);
const sequences = Number(env.SEQUENCES ?? 16);
const micro = Number(env.MICRO ?? 1);
// WARMUP_SEQUENCES=min: the warm-up step runs one micro-batch per data-parallel rank (it still touches every
// gradient buffer and optimizer state and compiles the code; the timed steps run the whole batch)
// (DualPipe and DualPipeV need 2·pp micro-batches)
const minChunks = layout.dims.pp > 1 && schedule.startsWith('dualpipe') ? 2 * layout.dims.pp : 1;
const warmupSequences =
  env.WARMUP_SEQUENCES === 'min'
    ? layout.dataParallelSize * micro * minChunks
    : Number(env.WARMUP_SEQUENCES ?? sequences);
const inputs = (step: number, count = sequences) => {
  const rng = new Rng(step);
  return {
    sequences: Array.from({ length: count }, () =>
      Int32Array.from({ length: seqLen }, () => Math.floor(rng.uniform() * vocab)),
    ),
    microBatch: micro,
    lr: 1e-3,
    mtpLambda: 0.3,
    seqAuxAlpha: 1e-4,
    biasUpdateSpeed: 1e-3,
    clipNorm: 1,
  };
};
const warmup = Number(env.WARMUP ?? 1);
const steps = Number(env.STEPS ?? 3);
const buildSecs = (performance.now() - built0) / 1000;
const warm0 = performance.now();
for (let s = 0; s < warmup; s++) await parallelTrainStep(run, inputs(s, warmupSequences));
const warmupSecs = (performance.now() - warm0) / 1000;
for (const h of run.ep)
  Object.assign(h.stats, { dispatchWaitMs: 0, combineWaitMs: 0, bytesTo: h.stats.bytesTo.fill(0) });
await world.barrier().wait();
resetExposedCommWait();
const t0 = performance.now();
for (let s = 0; s < steps; s++) await parallelTrainStep(run, inputs(warmup + s));
await world.barrier().wait();
const secs = (performance.now() - t0) / 1000;
// time with every stream of this rank waiting for an EP all-to-all (forward and backward)
const exposedWaitMs = exposedCommWaitMs();
const wait = run.ep.reduce((a, h) => a + h.stats.dispatchWaitMs + h.stats.combineWaitMs, 0);
const node = (epRank: number) => Math.floor(epRank / layout.epRanksPerNode);
const crossNodeBytes = run.ep.reduce(
  (a, h) => a + h.stats.bytesTo.reduce((b, x, j) => b + (node(j) !== node(h.group.rank) ? x : 0), 0),
  0,
);
// the last step's pipeline pass on the process-wide clock (worker threads each have their own origin)
const at = (t: number) => performance.timeOrigin + t;
const p = run.lastPipeline;
reportResult({
  ...(p && {
    pipeline: {
      start: at(p.start),
      end: at(p.end),
      trace: p.trace.map((t) => ({ ...t, start: at(t.start), end: at(t.end) })),
    },
  }),
  tokensPerSec: (steps * sequences * seqLen) / secs,
  secs,
  buildSecs,
  warmupSecs,
  commWaitMs: wait,
  exposedWaitMs,
  heldBytes: heldParameterBytes(model),
  // of the whole process: every worker-thread rank together
  peakRssBytes: process.resourceUsage().maxRSS * 1024,
  crossNodeBytes,
});
await world.destroy();
