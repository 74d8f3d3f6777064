// Predicted vs measured: the planner's step time for a dsv3-train run on this machine. dsv3-train's
// --parallel dp,pp,ep and the planner's TrainLayout mean the same thing (ep is its own factor of the
// world, dense layers data-parallel over dp·ep), so the layout passes through unchanged.
import type { ModelConfig } from '@dsv3/model';
import type { ScheduleKind } from '../pipeline/types.js';
import type { TrainLayout, TrainWorkload } from './layout.js';
import { machineCluster, type MachineProbe } from './probe.js';
import { planTraining, type TrainPlan } from './train.js';

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

/** The plan of one dsv3-train step on this machine (throws PlanError, with the nearest layout, if impossible). */
export function predictTrainerStep(
  model: ModelConfig,
  probe: MachineProbe,
  t: TrainerLayout,
  b: TrainerBatch,
  efficiency = 1,
): TrainPlan {
  return planTraining(model, machineCluster(probe, trainerRanks(t), efficiency), plannerLayout(t), plannerWorkload(b), {
    allowOverflow: false,
  });
}

/** The fraction of the GEMM rate that makes the one-rank prediction equal the one-rank measurement. */
export function calibrateEfficiency(
  model: ModelConfig,
  probe: MachineProbe,
  b: TrainerBatch,
  measured: number,
): number {
  const one: TrainerLayout = { dp: 1, pp: 1, ep: 1, schedule: '1f1b', zero1: false };
  const atPeak = predictTrainerStep(model, probe, one, b, 1).step.total;
  if (!(measured > 0)) throw new RangeError(`the measured one-rank step must be positive seconds, got ${measured}`);
  return Math.min(1, atPeak / measured);
}

/** Signed relative error of a prediction: +0.2 means predicted 20% above the measurement. */
export const predictionError = (predicted: number, measured: number): number => predicted / measured - 1;
