// One rank of bench/dp-step.ts: the tiny bench step (bench-step.ts: fp32, no MTP, no sequence-wise loss,
// AdamW with f32 moments over all parameters, clipping, gate-bias update) as one of DP data-parallel
// worker-thread ranks with GEMM_THREADS GEMM threads each. Every rank builds the whole model from the
// config's seed and draws the step's sequences as benchStep does (Rng(1)); parallelTrainStep takes its
// slice, one micro-batch per rank. Rank 0 reports each step's wall and process CPU (all ranks) and loss.
import { recyclingScopeAsync, Rng, setGemmThreads } from '@dsv3/core';
import { initProcessGroup, ParallelLayout, ProcessGroup, reportResult } from '@dsv3/parallel';
import { applyPrecision, buildModel } from '../src/index.js';
import { parallelTrainStep, setupParallel } from '../src/parallel/index.js';
import { benchConfig } from './bench-step.js';

const env = process.env;
// Milliseconds of each step from an all-reduce's call to its result (gradients, norm, loads, losses):
// the time this rank waits for the other or moves the sums.
let allReduceMs = 0;
const allReduce = ProcessGroup.prototype.allReduce;
ProcessGroup.prototype.allReduce = function (this: ProcessGroup, ...a: Parameters<ProcessGroup['allReduce']>) {
  const t0 = performance.now();
  const work = allReduce.apply(this, a);
  const wait = work.wait.bind(work);
  work.wait = async () => {
    const r = await wait();
    allReduceMs += performance.now() - t0;
    return r;
  };
  return work;
} as ProcessGroup['allReduce'];
setGemmThreads(Number(env.GEMM_THREADS ?? 1));
const world = await initProcessGroup({ timeoutMs: 600_000 });
const layout = ParallelLayout.parse(`dp=${world.size}`);
const cfg = benchConfig('tiny');
const model = buildModel(cfg);
applyPrecision(model, 'fp32');
model.train();
const run = setupParallel({
  world,
  layout,
  model,
  // as benchStep's AdamW: one group, weight decay 0.1 on every parameter
  paramGroups: [{ params: model.parameters(), weightDecay: 0.1 }],
  optimizer: { betas: [0.9, 0.95], eps: 1e-8, momentDType: 'f32' },
  zero1: false,
});
const seqs = cfg.batch.sequences;
const S = cfg.batch.seqLen;
const vocab = model.config.vocabSize;
const rng = new Rng(1);
// RECYCLE=1: the step in a recycling scope, as trainStep's recycleActivations does on one process
const recycle = env.RECYCLE === '1';
const step = async () => {
  const sequences = Array.from({ length: seqs }, () => Int32Array.from({ length: S }, () => rng.integer(0, vocab)));
  const inp = {
    sequences,
    microBatch: seqs / world.size,
    lr: 1e-4,
    mtpLambda: 0,
    seqAuxAlpha: 0,
    biasUpdateSpeed: 0.001,
    clipNorm: 1,
  };
  allReduceMs = 0;
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const r = recycle
    ? await recyclingScopeAsync(() => parallelTrainStep(run, inp), { keep: [model, run] })
    : await parallelTrainStep(run, inp);
  const c = process.cpuUsage(c0);
  return { wall: (performance.now() - t0) / 1000, cpu: (c.user + c.system) / 1e6, loss: r.loss, allReduceMs };
};
const steps = Number(env.STEPS ?? 12);
const warmup = Number(env.WARMUP ?? 4);
const out: Awaited<ReturnType<typeof step>>[] = [];
for (let s = 0; s < warmup + steps; s++) out.push(await step());
reportResult(out);
await world.destroy();
