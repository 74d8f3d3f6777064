// Pipeline schedules as data: per rank, the ordered operations a step runs.
//
// Identifiers: `stage` is the index of a model stage (0 = the one that takes the batch's inputs),
// `microBatch` the index of a micro-batch within the step (0..chunks-1). `phase` follows DeepSeek's
// DualPipe code: for DualPipe, on a rank of the first half phase 0 is the stream entering at rank 0 and
// phase 1 the stream entering at the last rank, on the second half the other way round; for DualPipeV,
// phase 0 is the V's first leg and phase 1 its return leg; GPipe, 1F1B and ZB1P have phase 0 only.

export type ScheduleKind = 'gpipe' | '1f1b' | 'zb1p' | 'dualpipe' | 'dualpipev';
export const SCHEDULE_KINDS: readonly ScheduleKind[] = ['gpipe', '1f1b', 'zb1p', 'dualpipe', 'dualpipev'];

export type Phase = 0 | 1;

/** One stage applied to one micro-batch. */
export interface Chunk {
  stage: number;
  microBatch: number;
}

export interface ForwardOp extends Chunk {
  kind: 'F';
  phase: Phase;
}

/** Backward for the stage's input; with `deferW` its weight gradients wait for a later `W`. */
export interface BackwardOp extends Chunk {
  kind: 'B';
  phase: Phase;
  deferW: boolean;
}

/** A forward and a (full) backward of two different chunks, run overlapped. */
export interface ForwardBackwardOp {
  kind: 'FB';
  forwardPhase: Phase;
  backwardPhase: Phase;
  forward: Chunk;
  backward: Chunk;
}

/** Weight gradients of the oldest deferred backward (FIFO, as DeepSeek's WeightGradStore). */
export interface WeightOp extends Chunk {
  kind: 'W';
}

/** Activations (output of `stage` on `microBatch`) travel forward, gradients (w.r.t. `stage`'s input) backward. */
export type Payload = 'activation' | 'gradient';

export interface SendOp extends Chunk {
  kind: 'send';
  payload: Payload;
  to: number;
}

export interface RecvOp extends Chunk {
  kind: 'recv';
  payload: Payload;
  from: number;
}

export type ComputeOp = ForwardOp | BackwardOp | ForwardBackwardOp | WeightOp;
export type PipelineOp = ComputeOp | SendOp | RecvOp;

export interface Schedule {
  kind: ScheduleKind;
  ranks: number;
  chunks: number;
  /** Number of model stages (ranks, or 2·ranks for DualPipeV). */
  stages: number;
  /** Ranks holding each stage (two for DualPipe: its two parameter copies). */
  stageOwners: number[][];
  /** Stages each rank holds. */
  rankStages: number[][];
  /** Per rank, the operations of one step in order. */
  ops: PipelineOp[][];
}

export interface ScheduleOptions {
  ranks: number;
  chunks: number;
}
