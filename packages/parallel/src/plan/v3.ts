// DeepSeek-V3's published system numbers, recomputed from first principles with the assumptions
// that produce them stated next to each (dsv3-plan v3, docs/plan.md).
import { countParameters, kvBytesPerToken, type ModelConfig } from '@dsv3/model';
import { buildSchedule } from '../pipeline/schedule.js';
import { simulate } from '../pipeline/simulate.js';
import type { ScheduleKind } from '../pipeline/types.js';
import { H800, type ClusterSpec } from './cluster.js';
import type { TrainLayout, TrainWorkload } from './layout.js';
import { planServing, V3_DECODE, V3_PREFILL, type ServePlan } from './serve.js';
import { crossNodeTraffic } from './traffic.js';
import { planTraining, type TrainPlan } from './train.js';

/** V3 pre-training: 2048 H800s, PP16 DualPipe, EP64 over 8 nodes, ZeRO-1 DP; 4K sequences, batch 15360. */
// 2048 GPUs: 16 pipeline stages of 128 data-parallel ranks, experts over 64 of them (2 copies of each shard).
export const V3_TRAIN_LAYOUT: TrainLayout = { dp: 2, pp: 16, ep: 64, tp: 1, schedule: 'dualpipe', zero1: true };
export const V3_TRAIN_WORKLOAD: TrainWorkload = {
  seqLen: 4096,
  globalBatch: 15360,
  microBatch: 1,
  maxNodesPerToken: 4,
};

export interface BubbleRow {
  kind: ScheduleKind;
  pp: number;
  chunks: number;
  simulated: number;
  formula: number;
  peakActivations: number;
  parameterCopies: number;
}

/**
 * The reference table's bubbles by simulation, in units of one forward chunk: F = 1, B (input part) = 1,
 * W = 0.5, F&B = 2 (an overlapped pair costs what its longer half plus a quarter does — any value between
 * max(F, B+W) and F+B+W gives the same agreement). Formulas in the table's terms (B = full backward = 1.5).
 */
export function bubbleTable(pps: number[] = [4, 8, 16], chunkFactors: number[] = [2, 4]): BubbleRow[] {
  const costs = { F: 1, B: 1, W: 0.5, FB: 2 };
  const full = costs.B + costs.W;
  const rows: BubbleRow[] = [];
  for (const pp of pps) {
    for (const f of chunkFactors) {
      const chunks = f * pp;
      const formulas: [ScheduleKind, number, number][] = [
        ['1f1b', pp, (pp - 1) * (costs.F + full)],
        ['zb1p', pp, (pp - 1) * (costs.F + full - 2 * costs.W)],
        ['dualpipe', pp, (pp / 2 - 1) * (costs.FB + full - 3 * costs.W)],
        // DualPipeV: PP stages on PP/2 devices.
        ['dualpipev', pp / 2, (pp / 2 - 1) * (costs.FB + full - 3 * costs.W)],
      ];
      for (const [kind, ranks, formula] of formulas) {
        const sim = simulate(buildSchedule(kind, { ranks, chunks }), costs);
        rows.push({
          kind,
          pp,
          chunks,
          simulated: sim.maxBubble,
          formula,
          peakActivations: sim.peakActivations,
          parameterCopies: sim.parameterCopies,
        });
      }
    }
  }
  return rows;
}

/** Finds the kernel efficiency (fraction of FP8 peak) at which the V3 layout costs `target` GPU-hours per trillion tokens. */
export function efficiencyForGpuHours(
  c: ModelConfig,
  target: number,
  cluster: ClusterSpec = H800,
): { efficiency: number; plan: TrainPlan } {
  let lo = 0.02;
  let hi = 1;
  for (let i = 0; i < 40; i++) {
    const mid = (lo + hi) / 2;
    const p = planTraining(c, { ...cluster, computeEfficiency: mid }, V3_TRAIN_LAYOUT, V3_TRAIN_WORKLOAD);
    if (p.gpuHoursPerTrillionTokens > target) lo = mid;
    else hi = mid;
  }
  const efficiency = (lo + hi) / 2;
  return {
    efficiency,
    plan: planTraining(c, { ...cluster, computeEfficiency: efficiency }, V3_TRAIN_LAYOUT, V3_TRAIN_WORKLOAD),
  };
}

export interface V3Reproduction {
  parameters: { total: number; activated: number; mtp: number };
  kvBytesPerToken: number;
  bubbles: BubbleRow[];
  /** Forward compute : cross-node all-to-all of one chunk with nothing overlapped (1F1B, all 132 SMs computing). */
  computeToComm: { ratio: number; efficiency: number };
  routing: {
    unrestricted: ReturnType<typeof crossNodeTraffic>;
    nodeLimited: ReturnType<typeof crossNodeTraffic>;
    ratioVsPerExpertCopies: number;
    ratioVsUnrestrictedHierarchical: number;
  };
  training: TrainPlan;
  gpuHours: { target: number; efficiency: number; mfuBf16: number; mfuFp8: number; plan: TrainPlan };
  prefill: ServePlan;
  decode: ServePlan;
}

export function reproduceV3(c: ModelConfig, cluster: ClusterSpec = H800): V3Reproduction {
  const p = countParameters(c);
  const noOverlap = planTraining(c, cluster, { ...V3_TRAIN_LAYOUT, schedule: '1f1b' }, V3_TRAIN_WORKLOAD);
  const traffic = { experts: c.nRoutedExperts, topK: c.numExpertsPerTok, nodes: 8, tokens: 4096 };
  const unrestricted = crossNodeTraffic({ ...traffic, maxNodes: null });
  const nodeLimited = crossNodeTraffic({ ...traffic, maxNodes: 4 });
  const solved = efficiencyForGpuHours(c, 180e3, cluster);
  return {
    parameters: { total: p.total, activated: p.activated, mtp: p.mtp },
    kvBytesPerToken: kvBytesPerToken(c, 2),
    bubbles: bubbleTable(),
    computeToComm: { ratio: noOverlap.computeToCommRatio, efficiency: cluster.computeEfficiency },
    routing: {
      unrestricted,
      nodeLimited,
      ratioVsPerExpertCopies: nodeLimited.remoteCopies / unrestricted.naiveRemoteCopies,
      ratioVsUnrestrictedHierarchical: nodeLimited.remoteCopies / unrestricted.remoteCopies,
    },
    training: planTraining(c, cluster, V3_TRAIN_LAYOUT, V3_TRAIN_WORKLOAD),
    gpuHours: {
      target: 180e3,
      efficiency: solved.efficiency,
      mfuBf16: solved.plan.mfuBf16,
      mfuFp8: solved.plan.mfuFp8,
      plan: solved.plan,
    },
    prefill: planServing(c, cluster, V3_PREFILL),
    decode: planServing(c, cluster, V3_DECODE),
  };
}
