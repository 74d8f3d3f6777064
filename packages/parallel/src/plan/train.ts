// Training plan: step time (compute, all-to-all, pipeline point-to-point, bubbles, what overlap hides),
// memory per GPU, tokens/s, MFU and GPU-hours per trillion tokens, from the model's accounting
// (@dsv3/model), the schedules and their simulator, and the cluster description.
import { countParameters, flopsPerToken, isMoeLayer, type ModelConfig } from '@dsv3/model';
import { buildSchedule } from '../pipeline/schedule.js';
import { simulate, type OpCosts } from '../pipeline/simulate.js';
import { effectiveFlops, type ClusterSpec } from './cluster.js';
import {
  chunksOf,
  dataParallelSize,
  layoutProblems,
  stageUnitsProblem,
  worldSize,
  type TrainLayout,
  type TrainWorkload,
} from './layout.js';
import { BYTES, trainingMemory, type MemoryReport } from './memory.js';
import { crossNodeTraffic } from './traffic.js';

export interface ChunkCosts {
  /** Forward / backward-for-inputs / backward-for-weights compute of one stage on one micro-batch (s), fixed costs included. */
  F: number;
  B: number;
  W: number;
  /** All-to-all (dispatch + combine) of one stage on one micro-batch, forward and backward (s), latency included. */
  allToAllForward: number;
  allToAllBackward: number;
  /** Activation (or gradient) transfer to the next stage (s), latency included. */
  p2p: number;
  /** The part of F (and of B, and of W) that is the fixed cost of launching the stage's operators (s). */
  fixed: number;
}

/** How the model is cut into pipeline stages: per stage, units [first, last) of the row [embedding, layer 0..L−1, head]. */
export type StageUnits = readonly (readonly [number, number])[];

export interface TrainPlanOptions {
  /** Plan a layout that does not fit in memory instead of throwing. */
  allowOverflow?: boolean;
  /**
   * The actual split of the model into stages (the head unit carries the final norm, the output head,
   * the MTP modules and the losses). Default: balanced stages (embedding, head and layers spread so
   * that every stage costs the same).
   */
  stageUnits?: StageUnits;
}

export interface TrainPlan {
  layout: TrainLayout;
  workload: TrainWorkload;
  world: number;
  chunks: number;
  stages: number;
  /** Per-chunk costs of the costliest stage (every stage's are in `stageChunks`). */
  chunk: ChunkCosts;
  stageChunks: ChunkCosts[];
  /** Cross-node copies per token per MoE layer on the hierarchical path (routing simulated). */
  remoteCopiesPerToken: number;
  step: {
    /** Seconds of one optimizer step on the busiest rank. */
    total: number;
    /** Compute of the busiest rank's chunks, their fixed costs included. */
    compute: number;
    /** The fixed costs of launching operators within `compute`. */
    fixed: number;
    allToAll: number;
    /** All-to-all time hidden under computation (DualPipe's overlapped F&B pairs). */
    allToAllHidden: number;
    /** Bubble of the rank with the most idle time. */
    bubble: number;
    /** ZeRO-1 reduce-scatter of gradients + all-gather of parameters (or the all-reduce without it), and the step's small collectives (loss, gradient norm, expert loads). */
    dataParallel: number;
    /** The optimizer update of the rank's parameters (memory-bound). */
    optimizer: number;
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

/**
 * Forward matmul FLOPs per token of each unit of the row [embedding, layer 0..L−1, head] at sequence
 * length `seqLen` (causal attention over seqLen/2 keys on average); the head unit carries the output
 * head and `mtpDepth` MTP modules (eh_proj, a MoE block, the shared head). Summed with mtpDepth 0 it is
 * @dsv3/model's flopsPerToken (prefill).
 */
export function unitFlopsPerToken(c: ModelConfig, seqLen: number, mtpDepth = 0): number[] {
  const p = countParameters(c);
  const h = c.hiddenSize;
  const attnMatmul = p.attentionPerLayer - (c.qLoraRank ?? 0) - c.kvLoraRank;
  const scores = 2 * c.numHeads * (seqLen / 2) * (c.qkNopeHeadDim + c.qkRopeHeadDim + c.vHeadDim);
  const moe = c.nRoutedExperts * h + p.moePerLayer.shared + c.numExpertsPerTok * p.moePerLayer.routedExpert;
  const layer = (i: number): number => 2 * (attnMatmul + (isMoeLayer(c, i) ? moe : p.denseMlpPerLayer)) + scores;
  const head = 2 * c.vocabSize * h;
  const mtp = 2 * (2 * h * h + attnMatmul + moe) + scores + head;
  return [0, ...Array.from({ length: c.numHiddenLayers }, (_, i) => layer(i)), head + mtpDepth * mtp];
}

/** Balanced stages: the embedding, head and layers spread so that every stage costs the same. */
function balancedStage(c: ModelConfig, stages: number, mtpDepth: number, flops: number[]) {
  const total = flops.reduce((a, b) => a + b, 0);
  let moe = 0;
  for (let i = 0; i < c.numHiddenLayers; i++) if (isMoeLayer(c, i)) moe++;
  return {
    flops: total / stages,
    moeLayers: (moe + mtpDepth) / stages,
    operatorLayers: (c.numHiddenLayers + 1 + mtpDepth) / stages,
  };
}

/**
 * Per-chunk costs of each stage: its FLOPs at the cluster's rate, the fixed cost of launching its
 * operators (opsPerLayer per layer, the head and each MTP module counted as one layer; backward
 * twice the forward's), its MoE layers' all-to-alls (bandwidth plus one latency per dispatch and per
 * combine), and the activation send to the next stage.
 */
export function stageChunkCosts(
  c: ModelConfig,
  cl: ClusterSpec,
  l: TrainLayout,
  w: TrainWorkload,
  split?: StageUnits,
): { costs: ChunkCosts[]; remote: number } {
  const stages = l.schedule === 'dualpipev' ? 2 * l.pp : l.pp;
  const tokens = w.microBatch * w.seqLen;
  const overlap = l.schedule === 'dualpipe' || l.schedule === 'dualpipev';
  const mtpDepth = w.mtpDepth ?? 0;
  const flops = unitFlopsPerToken(c, w.seqLen, mtpDepth);
  const shapes = split
    ? split.map(([a, b]) => {
        let moe = 0;
        let layers = 0;
        for (let u = a; u < b; u++) {
          if (u >= 1 && u <= c.numHiddenLayers) {
            layers++;
            if (isMoeLayer(c, u - 1)) moe++;
          }
        }
        // the head unit: the output head and each MTP module (a MoE block of its own) count as a layer each
        const mtp = b === c.numHiddenLayers + 2 ? mtpDepth : 0;
        const head = b === c.numHiddenLayers + 2 ? 1 + mtp : 0;
        return {
          flops: flops.slice(a, b).reduce((x, y) => x + y, 0),
          moeLayers: moe + mtp,
          operatorLayers: layers + head,
        };
      })
    : Array.from({ length: stages }, () => balancedStage(c, stages, mtpDepth, flops));
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
  // One MoE layer on one micro-batch: its tokens' bytes, and one latency for the dispatch and one for the combine.
  const perLayer = (bytes: number): number =>
    tokensPerGpu * Math.max((remote * bytes) / cl.ibBandwidth, (intra * bytes) / cl.nvlinkBandwidth) +
    (l.ep > 1 ? 2 * cl.linkLatency : 0);
  const p2pBw = l.pp > 1 && dataParallelSize(l) * l.tp >= cl.gpusPerNode ? cl.ibBandwidth : cl.nvlinkBandwidth;
  const rate = effectiveFlops(cl, overlap);
  const costs = shapes.map((st): ChunkCosts => {
    const fixed = st.operatorLayers * cl.opsPerLayer * cl.opOverhead;
    const F = (tokens * st.flops) / l.tp / rate + fixed;
    return {
      F,
      B: F,
      W: F,
      allToAllForward: st.moeLayers * perLayer(fwdBytes),
      allToAllBackward: st.moeLayers * perLayer(bwdBytes),
      p2p: l.pp > 1 ? (tokensPerGpu * h * 2) / p2pBw + cl.linkLatency : 0,
      fixed,
    };
  });
  return { costs, remote };
}

/** Per-chunk costs of one stage, stages balanced (the embedding, the head and the layers spread evenly). */
export function chunkCosts(
  c: ModelConfig,
  cl: ClusterSpec,
  l: TrainLayout,
  w: TrainWorkload,
): { costs: ChunkCosts; remote: number } {
  const r = stageChunkCosts(c, cl, l, w);
  return { costs: r.costs[0]!, remote: r.remote };
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

/** Simulator costs of stages that differ: each op costs what its own stage's chunk costs. */
function stageOpCosts(ks: ChunkCosts[]): OpCosts {
  const of = (stage: number): ChunkCosts => ks[stage]!;
  return {
    ...opCosts(ks[0]!),
    costOf: (_rank, _index, op) => {
      switch (op.kind) {
        case 'F':
          return of(op.stage).F + of(op.stage).allToAllForward;
        case 'B':
          return of(op.stage).B + (op.deferW ? 0 : of(op.stage).W) + of(op.stage).allToAllBackward;
        case 'W':
          return of(op.stage).W;
        case 'FB': {
          const f = of(op.forward.stage);
          const b = of(op.backward.stage);
          return Math.max(f.F + b.B + b.W, f.allToAllForward + b.allToAllBackward);
        }
        default:
          return 0;
      }
    },
  };
}

/** Bytes an AdamW update moves per parameter: FP32 master read+write, BF16 moments read+write, FP32 gradient read, BF16 weight write. */
const OPTIMIZER_BYTES_PER_PARAMETER = 2 * BYTES.master + 2 * BYTES.moments + BYTES.grad + BYTES.weight;

function planUnchecked(
  c: ModelConfig,
  cl: ClusterSpec,
  l: TrainLayout,
  w: TrainWorkload,
  split?: StageUnits,
): TrainPlan {
  const chunks = chunksOf(l, w);
  const schedule = buildSchedule(l.schedule, { ranks: l.pp, chunks });
  const { costs: ks, remote } = stageChunkCosts(c, cl, l, w, split);
  const sim = simulate(schedule, stageOpCosts(ks));
  const busiest = sim.ranks.reduce((a, b) => (b.busy > a.busy ? b : a));
  let compute = 0;
  let fixed = 0;
  let allToAll = 0;
  for (const { op } of busiest.timeline) {
    // [stage, forward, backward for inputs, backward for weights] of each compute op
    const parts: [number, boolean, boolean, boolean][] =
      op.kind === 'F'
        ? [[op.stage, true, false, false]]
        : op.kind === 'B'
          ? [[op.stage, false, true, !op.deferW]]
          : op.kind === 'W'
            ? [[op.stage, false, false, true]]
            : op.kind === 'FB'
              ? [
                  [op.forward.stage, true, false, false],
                  [op.backward.stage, false, true, true],
                ]
              : [];
    for (const [stage, f, b, wg] of parts) {
      const k = ks[stage]!;
      const n = Number(f) + Number(b) + Number(wg);
      compute += (f ? k.F : 0) + (b ? k.B : 0) + (wg ? k.W : 0);
      fixed += n * k.fixed;
      allToAll += (f ? k.allToAllForward : 0) + (b ? k.allToAllBackward : 0);
    }
  }
  const exposed = busiest.busy - compute;
  const memory = trainingMemory(c, l, w, sim.peakActivations);
  // Gradient reduce-scatter + parameter all-gather (ZeRO-1) or all-reduce: ~2·(n−1)/n of the bytes each way, over IB,
  // in 2·(n−1) ring steps; and the step's small all-reduces over the world (loss, gradient norm, each MoE layer's expert loads).
  const dpGroup = dataParallelSize(l);
  const dpBytes = dpGroup > 1 ? ((2 * (dpGroup - 1)) / dpGroup) * memory.parameters * (l.zero1 ? (4 + 2) / 2 : 4) : 0;
  let moeLayers = 0;
  for (let i = 0; i < c.numHiddenLayers; i++) if (isMoeLayer(c, i)) moeLayers++;
  const world = worldSize(l);
  const dataParallel =
    dpBytes / cl.ibBandwidth +
    (dpGroup > 1 ? 2 * (dpGroup - 1) * cl.linkLatency : 0) +
    (world > 1 ? (2 + moeLayers) * 2 * (world - 1) * cl.linkLatency : 0);
  const optimizer =
    ((memory.optimizer / (BYTES.master + BYTES.moments)) * OPTIMIZER_BYTES_PER_PARAMETER) / cl.hbmBandwidth;
  const total = sim.makespan + dataParallel + optimizer;
  const tokensPerSecond = (w.globalBatch * w.seqLen) / total;
  const modelFlops = flopsPerToken(c, { context: w.seqLen, mode: 'train' }) * tokensPerSecond;
  const costliest = ks.reduce((a, b) => (b.F + b.allToAllForward > a.F + a.allToAllForward ? b : a));
  return {
    layout: l,
    workload: w,
    world,
    chunks,
    stages: schedule.stages,
    chunk: costliest,
    stageChunks: ks,
    remoteCopiesPerToken: remote,
    step: {
      total,
      compute,
      fixed,
      allToAll,
      allToAllHidden: Math.max(0, allToAll - exposed),
      bubble: sim.maxBubble,
      dataParallel,
      optimizer,
      pipelineP2P: schedule.ops[busiest.rank]!.filter((op) => op.kind === 'send').length * costliest.p2p,
    },
    memory: { ...memory, hbm: cl.hbmBytes, fits: memory.total <= cl.hbmBytes },
    tokensPerSecond,
    mfuBf16: modelFlops / (world * cl.flops.bf16),
    mfuFp8: modelFlops / (world * cl.flops.fp8),
    gpuHoursPerTrillionTokens: (world * 1e12) / tokensPerSecond / 3600,
    computeToCommRatio: costliest.allToAllForward > 0 ? costliest.F / costliest.allToAllForward : Infinity,
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
  opts: TrainPlanOptions = {},
): TrainPlan {
  const problems = layoutProblems(c, l, w);
  if (opts.stageUnits && !problems.length) {
    const bad = stageUnitsProblem(c, l.schedule === 'dualpipev' ? 2 * l.pp : l.pp, opts.stageUnits);
    if (bad) throw new RangeError(`planTraining: ${bad}`);
  }
  if (problems.length) throw new PlanError(problems, nearestLayouts(c, cl, l, w, 1)[0] ?? null, worldSize(l));
  const plan = planUnchecked(c, cl, l, w, opts.stageUnits);
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
