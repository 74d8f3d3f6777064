// Training plan: step time (compute, all-to-all, pipeline point-to-point, bubbles, what overlap hides),
// memory per GPU, tokens/s, MFU and GPU-hours per trillion tokens, from the model's accounting
// (@dsv3/model), the schedules and their simulator, and the cluster description.
import { flopsPerToken, isMoeLayer, type ModelConfig } from '@dsv3/model';
import { buildSchedule } from '../pipeline/schedule.js';
import { simulate, type OpCosts } from '../pipeline/simulate.js';
import { effectiveFlops, type ClusterSpec } from './cluster.js';
import {
  chunksOf,
  dataParallelSize,
  layoutProblems,
  worldSize,
  type TrainLayout,
  type TrainWorkload,
} from './layout.js';
import { trainingMemory, type MemoryReport } from './memory.js';
import { crossNodeTraffic } from './traffic.js';

export interface ChunkCosts {
  /** Forward / backward-for-inputs / backward-for-weights compute of one stage on one micro-batch (s). */
  F: number;
  B: number;
  W: number;
  /** All-to-all (dispatch + combine) of one stage on one micro-batch, forward and backward (s). */
  allToAllForward: number;
  allToAllBackward: number;
  /** Activation (or gradient) transfer to the next stage (s). */
  p2p: number;
}

export interface TrainPlan {
  layout: TrainLayout;
  workload: TrainWorkload;
  world: number;
  chunks: number;
  stages: number;
  chunk: ChunkCosts;
  /** Cross-node copies per token per MoE layer on the hierarchical path (routing simulated). */
  remoteCopiesPerToken: number;
  step: {
    /** Seconds of one optimizer step on the busiest rank. */
    total: number;
    compute: number;
    allToAll: number;
    /** All-to-all time hidden under computation (DualPipe's overlapped F&B pairs). */
    allToAllHidden: number;
    /** Bubble of the rank with the most idle time. */
    bubble: number;
    /** ZeRO-1 reduce-scatter of gradients + all-gather of parameters (or the all-reduce without it). */
    dataParallel: number;
    /** Pipeline sends of the busiest rank (activations forward, gradients backward), overlapped with compute. */
    pipelineP2P: number;
  };
  memory: MemoryReport & { hbm: number; fits: boolean };
  tokensPerSecond: number;
  /** Model FLOPs / (GPUs · BF16 peak), and against the FP8 peak. */
  mfuBf16: number;
  mfuFp8: number;
  gpuHoursPerTrillionTokens: number;
  /** Forward compute : forward cross-node all-to-all of one chunk when nothing overlaps. */
  computeToCommRatio: number;
}

export class PlanError extends Error {
  constructor(
    readonly problems: string[],
    readonly suggestion: TrainLayout | null,
    world: number,
  ) {
    super(
      `impossible training layout: ${problems.join('; ')}. ${suggestion ? `Nearest layout that works: ${describeLayout(suggestion)}` : `No layout of ${world} GPUs works for this model and workload: add GPUs or shorten sequences/micro-batches`}`,
    );
    this.name = 'PlanError';
  }
}

export const describeLayout = (l: TrainLayout): string =>
  `dp=${l.dp},pp=${l.pp},ep=${l.ep},tp=${l.tp} ${l.schedule}${l.zero1 ? ' zero1' : ''}`;

const trafficCache = new Map<string, number>();
function remoteCopies(c: ModelConfig, cl: ClusterSpec, l: TrainLayout, w: TrainWorkload): number {
  if (l.ep === 1) return 0;
  const nodes = Math.ceil(l.ep / cl.gpusPerNode);
  const gpus = Math.min(l.ep, cl.gpusPerNode);
  if (nodes === 1 || c.nRoutedExperts % nodes !== 0) return nodes === 1 ? 0 : c.numExpertsPerTok;
  const m = w.maxNodesPerToken === null ? null : Math.min(w.maxNodesPerToken, nodes);
  const k = `${c.nRoutedExperts}/${c.numExpertsPerTok}/${nodes}/${m}/${gpus}`;
  if (!trafficCache.has(k)) {
    const maxNodes = m !== null && m * (c.nRoutedExperts / nodes) >= c.numExpertsPerTok ? m : null;
    trafficCache.set(
      k,
      crossNodeTraffic({ experts: c.nRoutedExperts, topK: c.numExpertsPerTok, nodes, maxNodes, tokens: 2048 })
        .remoteCopies,
    );
  }
  return trafficCache.get(k)!;
}

/** Per-chunk costs of one stage (stages assumed balanced: layers, embedding and head spread evenly). */
export function chunkCosts(
  c: ModelConfig,
  cl: ClusterSpec,
  l: TrainLayout,
  w: TrainWorkload,
): { costs: ChunkCosts; remote: number } {
  const stages = l.schedule === 'dualpipev' ? 2 * l.pp : l.pp;
  const tokens = w.microBatch * w.seqLen;
  const overlap = l.schedule === 'dualpipe' || l.schedule === 'dualpipev';
  const fwdFlops = (tokens * flopsPerToken(c, { context: w.seqLen, mode: 'prefill' })) / stages / l.tp;
  const F = fwdFlops / effectiveFlops(cl, overlap);
  let moeLayers = 0;
  for (let i = 0; i < c.numHiddenLayers; i++) if (isMoeLayer(c, i)) moeLayers++;
  const remote = remoteCopies(c, cl, l, w);
  const tokensPerGpu = tokens / l.tp;
  const h = c.hiddenSize;
  // Forward: FP8 dispatch (1 byte + a 4-byte scale per 128) and BF16 combine; backward: BF16 both ways.
  const fwdBytes = h * (1 + 4 / 128) + 2 * h;
  const bwdBytes = 2 * h + 2 * h;
  const intra =
    l.ep > 1
      ? c.numExpertsPerTok * Math.min(1, (Math.min(l.ep, cl.gpusPerNode) - 1) / Math.min(l.ep, cl.gpusPerNode))
      : 0;
  const perLayer = (bytes: number): number =>
    Math.max((remote * bytes) / cl.ibBandwidth, (intra * bytes) / cl.nvlinkBandwidth);
  const layersPerStage = moeLayers / stages;
  const p2pBw = l.pp > 1 && dataParallelSize(l) * l.tp >= cl.gpusPerNode ? cl.ibBandwidth : cl.nvlinkBandwidth;
  return {
    costs: {
      F,
      B: F,
      W: F,
      allToAllForward: layersPerStage * tokensPerGpu * perLayer(fwdBytes),
      allToAllBackward: layersPerStage * tokensPerGpu * perLayer(bwdBytes),
      p2p: l.pp > 1 ? (tokensPerGpu * h * 2) / p2pBw : 0,
    },
    remote,
  };
}

/** Simulator costs: comm is exposed in standalone ops and hidden in DualPipe's overlapped pairs. */
export function opCosts(k: ChunkCosts): OpCosts {
  return {
    F: k.F + k.allToAllForward,
    B: k.B + k.allToAllBackward,
    W: k.W,
    FB: Math.max(k.F + k.B + k.W, k.allToAllForward + k.allToAllBackward),
    p2p: k.p2p,
  };
}

function planUnchecked(c: ModelConfig, cl: ClusterSpec, l: TrainLayout, w: TrainWorkload): TrainPlan {
  const chunks = chunksOf(l, w);
  const schedule = buildSchedule(l.schedule, { ranks: l.pp, chunks });
  const { costs: k, remote } = chunkCosts(c, cl, l, w);
  const sim = simulate(schedule, opCosts(k));
  const busiest = sim.ranks.reduce((a, b) => (b.busy > a.busy ? b : a));
  const stageChunks = busiest.timeline.reduce((n, t) => n + (t.op.kind === 'F' || t.op.kind === 'FB' ? 1 : 0), 0);
  const compute = stageChunks * (k.F + k.B + k.W);
  const allToAll = stageChunks * (k.allToAllForward + k.allToAllBackward);
  const exposed = busiest.busy - compute;
  const memory = trainingMemory(c, l, w, sim.peakActivations);
  // Gradient reduce-scatter + parameter all-gather (ZeRO-1) or all-reduce: ~2·(n−1)/n of the bytes each way, over IB.
  const dpGroup = dataParallelSize(l);
  const dpBytes = dpGroup > 1 ? ((2 * (dpGroup - 1)) / dpGroup) * memory.parameters * (l.zero1 ? (4 + 2) / 2 : 4) : 0;
  const dataParallel = dpBytes / cl.ibBandwidth;
  const total = sim.makespan + dataParallel;
  const tokensPerSecond = (w.globalBatch * w.seqLen) / total;
  const world = worldSize(l);
  const modelFlops = flopsPerToken(c, { context: w.seqLen, mode: 'train' }) * tokensPerSecond;
  return {
    layout: l,
    workload: w,
    world,
    chunks,
    stages: schedule.stages,
    chunk: k,
    remoteCopiesPerToken: remote,
    step: {
      total,
      compute,
      allToAll,
      allToAllHidden: Math.max(0, allToAll - exposed),
      bubble: sim.maxBubble,
      dataParallel,
      pipelineP2P: schedule.ops[busiest.rank]!.filter((op) => op.kind === 'send').length * k.p2p,
    },
    memory: { ...memory, hbm: cl.hbmBytes, fits: memory.total <= cl.hbmBytes },
    tokensPerSecond,
    mfuBf16: modelFlops / (world * cl.flops.bf16),
    mfuFp8: modelFlops / (world * cl.flops.fp8),
    gpuHoursPerTrillionTokens: (world * 1e12) / tokensPerSecond / 3600,
    computeToCommRatio: k.allToAllForward > 0 ? k.F / k.allToAllForward : Infinity,
  };
}

const divisors = (n: number): number[] => Array.from({ length: n }, (_, i) => i + 1).filter((d) => n % d === 0);

/** Valid layouts on the same world size (and tp), closest first (log-distance of dp, pp, ep), that fit in HBM. */
export function nearestLayouts(
  c: ModelConfig,
  cl: ClusterSpec,
  l: TrainLayout,
  w: TrainWorkload,
  limit = 3,
): TrainLayout[] {
  const world = worldSize(l);
  const out: { layout: TrainLayout; d: number }[] = [];
  const dist = (a: number, b: number): number => Math.abs(Math.log2(a / b));
  for (const pp of divisors(Math.max(1, Math.floor(world / l.tp)))) {
    // D: a stage's data-parallel ranks (dp·ep), of which ep hold different experts
    const D = world / l.tp / pp;
    if (!Number.isInteger(D)) continue;
    for (const ep of divisors(D)) {
      for (const schedule of [l.schedule, 'dualpipev', 'zb1p', '1f1b'] as const) {
        const cand: TrainLayout = { ...l, dp: D / ep, pp, ep, schedule };
        const workload = {
          ...w,
          globalBatch: Math.max(w.globalBatch - (w.globalBatch % (D * w.microBatch)), D * w.microBatch),
        };
        if (layoutProblems(c, cand, workload).length) continue;
        const d =
          dist(D, dataParallelSize(l)) +
          dist(pp, l.pp) +
          dist(ep, l.ep) +
          (schedule === l.schedule ? 0 : 0.5) +
          (workload.globalBatch === w.globalBatch ? 0 : 0.25);
        out.push({ layout: cand, d });
        break;
      }
    }
  }
  out.sort((a, b) => a.d - b.d);
  const fitting: TrainLayout[] = [];
  for (const { layout } of out) {
    if (fitting.length >= limit) break;
    const D = dataParallelSize(layout);
    const workload = {
      ...w,
      globalBatch: Math.max(w.globalBatch - (w.globalBatch % (D * w.microBatch)), D * w.microBatch),
    };
    if (planUnchecked(c, cl, layout, workload).memory.fits) fitting.push(layout);
  }
  return fitting;
}

/** Plans one training step; an impossible layout or one that does not fit throws PlanError with the nearest that works. */
export function planTraining(
  c: ModelConfig,
  cl: ClusterSpec,
  l: TrainLayout,
  w: TrainWorkload,
  opts: { allowOverflow?: boolean } = {},
): TrainPlan {
  const problems = layoutProblems(c, l, w);
  if (problems.length) throw new PlanError(problems, nearestLayouts(c, cl, l, w, 1)[0] ?? null, worldSize(l));
  const plan = planUnchecked(c, cl, l, w);
  if (!plan.memory.fits && !opts.allowOverflow) {
    const gb = (x: number): string => `${(x / 1e9).toFixed(1)} GB`;
    const m = plan.memory;
    throw new PlanError(
      [
        `needs ${gb(m.total)} per GPU (weights ${gb(m.weights)}, gradients ${gb(m.gradients)}, optimizer ${gb(m.optimizer)}, activations ${gb(m.activations)} for ${m.peakChunks} chunks in flight) but a GPU has ${gb(cl.hbmBytes)}`,
      ],
      nearestLayouts(c, cl, l, w, 1)[0] ?? null,
      worldSize(l),
    );
  }
  return plan;
}
