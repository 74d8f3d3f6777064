// Predicted vs measured: the planner's step time for a dsv3-train run on this machine. dsv3-train's
// --parallel dp,pp,ep and the planner's TrainLayout mean the same thing (ep is its own factor of the
// world, dense layers data-parallel over dp·ep), so the layout passes through unchanged.
import type { ModelConfig } from '@dsv3/model';
import type { ScheduleKind } from '../pipeline/types.js';
import type { TrainLayout, TrainWorkload } from './layout.js';
import { machineCluster, type MachineProbe } from './probe.js';
import { planTraining, type StageUnits, type TrainPlan } from './train.js';

/** A dsv3-train layout (--parallel dp=..,pp=..,ep=.. --pp-schedule ..). */
export interface TrainerLayout {
  dp: number;
  pp: number;
  ep: number;
  schedule: ScheduleKind;
  zero1: boolean;
}

/** dsv3-train's batch: sequences per step, sequences per micro-batch, tokens per sequence. */
export interface TrainerBatch {
  sequences: number;
  microBatch: number;
  seqLen: number;
}

export const trainerRanks = (t: TrainerLayout): number => t.dp * t.pp * t.ep;

export function plannerLayout(t: TrainerLayout): TrainLayout {
  return { dp: t.dp, pp: t.pp, ep: t.ep, tp: 1, schedule: t.pp > 1 ? t.schedule : '1f1b', zero1: t.zero1 };
}

export function plannerWorkload(b: TrainerBatch): TrainWorkload {
  return { seqLen: b.seqLen, globalBatch: b.sequences, microBatch: b.microBatch, maxNodesPerToken: null };
}

/**
 * dsv3-train's split of L layers into pipeline stages: the row [embedding, layer 0..L−1, head] cut into
 * contiguous runs of ⌊s·(L+2)/stages⌋ units (stageUnits of @dsv3/train, which depends on this package).
 */
export function trainerStageUnits(layers: number, stages: number): StageUnits {
  const U = layers + 2;
  return Array.from({ length: stages }, (_, s) => [Math.floor((s * U) / stages), Math.floor(((s + 1) * U) / stages)]);
}

/** The plan of one dsv3-train step on this machine (throws PlanError, with the nearest layout, if impossible). */
export function predictTrainerStep(
  model: ModelConfig,
  probe: MachineProbe,
  t: TrainerLayout,
  b: TrainerBatch,
  efficiency = 1,
  mtpDepth = 0,
): TrainPlan {
  const l = plannerLayout(t);
  return planTraining(
    model,
    machineCluster(probe, trainerRanks(t), efficiency),
    l,
    { ...plannerWorkload(b), mtpDepth },
    {
      allowOverflow: false,
      stageUnits: trainerStageUnits(model.numHiddenLayers, l.schedule === 'dualpipev' ? 2 * l.pp : l.pp),
    },
  );
}

/**
 * The fraction of the GEMM rate that makes the one-rank prediction equal the one-rank measurement
 * (the fixed costs, the optimizer and the rest do not scale with it; found by bisection, at most 1).
 */
export function calibrateEfficiency(
  model: ModelConfig,
  probe: MachineProbe,
  b: TrainerBatch,
  measured: number,
  mtpDepth = 0,
): number {
  if (!(measured > 0)) throw new RangeError(`the measured one-rank step must be positive seconds, got ${measured}`);
  const one: TrainerLayout = { dp: 1, pp: 1, ep: 1, schedule: '1f1b', zero1: false };
  const at = (eff: number): number => predictTrainerStep(model, probe, one, b, eff, mtpDepth).step.total;
  if (at(1) >= measured) return 1;
  const p = predictTrainerStep(model, probe, one, b, 1, mtpDepth);
  if (p.step.fixed + p.step.optimizer >= measured)
    throw new RangeError(
      `the measured one-rank step (${measured.toFixed(3)} s) is shorter than its predicted fixed costs (${(p.step.fixed + p.step.optimizer).toFixed(3)} s): the probe's per-operator cost is too high for this run`,
    );
  let lo = 1e-9;
  let hi = 1;
  for (let i = 0; i < 100; i++) {
    const mid = Math.sqrt(lo * hi);
    if (at(mid) > measured) lo = mid;
    else hi = mid;
  }
  return Math.sqrt(lo * hi);
}

/** Signed relative error of a prediction: +0.2 means predicted 20% above the measurement. */
export const predictionError = (predicted: number, measured: number): number => predicted / measured - 1;
