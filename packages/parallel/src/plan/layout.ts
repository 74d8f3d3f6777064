// A training layout (data, pipeline, expert, tensor parallel degrees and the pipeline schedule) and the
// workload it runs; what makes one impossible, said plainly. The degrees mean what they mean to the
// trainer's ParallelLayout (one meaning for both): the world is tp × ep × dp × pp, ep its own factor;
// a stage's dense layers run data-parallel over its dp·ep ranks, each expert is replicated over dp.
import type { ModelConfig } from '@dsv3/model';
import { scheduleError } from '../pipeline/schedule.js';
import type { ScheduleKind } from '../pipeline/types.js';

export interface TrainLayout extends LayoutDegrees {
  /** Copies of each expert shard (expert data parallelism); dense layers are data-parallel over dp·ep. */
  dp: number;
  pp: number;
  /** Expert-parallel degree: routed experts sharded over ep ranks (a factor of the world of its own). */
  ep: number;
  tp: number;
  schedule: ScheduleKind;
  /** Shard optimizer state over the data-parallel group (ZeRO-1). */
  zero1: boolean;
}

export interface TrainWorkload {
  seqLen: number;
  /** Sequences per optimizer step, all data-parallel ranks together. */
  globalBatch: number;
  /** Sequences per pipeline micro-batch. */
  microBatch: number;
  /** M: nodes a token's experts may span (node-limited routing); null = unrestricted. */
  maxNodesPerToken: number | null;
  /** MTP modules trained beside the main model (their FLOPs go to the last stage); default 0. */
  mtpDepth?: number;
}

/** The degrees of a layout, as the planner and the trainer's ParallelLayout both read them. */
export interface LayoutDegrees {
  dp: number;
  pp: number;
  ep: number;
  tp: number;
}

export const worldSize = (l: LayoutDegrees): number => l.dp * l.ep * l.pp * l.tp;

/** Data-parallel ranks of one stage (dp·ep), each reading its own slice of the batch. */
export const dataParallelSize = (l: LayoutDegrees): number => l.dp * l.ep;

/** Micro-batches each pipeline runs per step. */
export const chunksOf = (l: TrainLayout, w: TrainWorkload): number =>
  w.globalBatch / (dataParallelSize(l) * w.microBatch);

/** Everything structurally wrong with a layout (memory is checked by the planner). */
export function layoutProblems(c: ModelConfig, l: TrainLayout, w: TrainWorkload): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries({
    dp: l.dp,
    pp: l.pp,
    ep: l.ep,
    tp: l.tp,
    seqLen: w.seqLen,
    globalBatch: w.globalBatch,
    microBatch: w.microBatch,
  })) {
    if (!Number.isInteger(v) || v < 1) out.push(`${k} must be a positive integer, got ${v}`);
  }
  if (out.length) return out;
  const stages = l.schedule === 'dualpipev' ? 2 * l.pp : l.pp;
  if (stages > c.numHiddenLayers)
    out.push(`${l.schedule} with pp=${l.pp} needs ${stages} stages but the model has ${c.numHiddenLayers} layers`);
  if (c.nRoutedExperts % l.ep !== 0) out.push(`ep=${l.ep} must divide the ${c.nRoutedExperts} routed experts`);
  if (c.numHeads % l.tp !== 0) out.push(`tp=${l.tp} must divide the ${c.numHeads} attention heads`);
  const D = dataParallelSize(l);
  if (w.globalBatch % (D * w.microBatch) !== 0)
    out.push(`global batch ${w.globalBatch} is not a multiple of dp·ep·micro-batch = ${D * w.microBatch}`);
  else {
    const err = scheduleError(l.schedule, { ranks: l.pp, chunks: chunksOf(l, w) });
    if (err) out.push(`${err} (chunks = global batch / (dp·ep·micro-batch))`);
  }
  if (w.maxNodesPerToken !== null && (!Number.isInteger(w.maxNodesPerToken) || w.maxNodesPerToken < 1))
    out.push(`maxNodesPerToken must be a positive integer or null, got ${w.maxNodesPerToken}`);
  const mtp = w.mtpDepth ?? 0;
  if (!Number.isInteger(mtp) || mtp < 0) out.push(`mtpDepth must be a non-negative integer, got ${mtp}`);
  return out;
}

/** Parses "dp=2,pp=2,ep=2[,tp=1]" (the --parallel syntax of dsv3-train and dsv3-plan). */
export function parseParallel(spec: string): { dp: number; pp: number; ep: number; tp: number } {
  const out = { dp: 1, pp: 1, ep: 1, tp: 1 };
  for (const part of spec
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const m = /^(dp|pp|ep|tp)=(\d+)$/.exec(part);
    if (!m)
      throw new Error(
        `--parallel: cannot read '${part}' (expected dp=N, pp=N, ep=N or tp=N, comma-separated, e.g. dp=2,pp=2,ep=2)`,
      );
    out[m[1] as keyof typeof out] = Number(m[2]);
  }
  return out;
}

/** What is wrong with a stage split: every unit [embedding, layer 0..L−1, head] in exactly one stage, in order. */
export function stageUnitsProblem(
  c: ModelConfig,
  stages: number,
  split: readonly (readonly [number, number])[],
): string | null {
  const units = c.numHiddenLayers + 2;
  if (split.length !== stages) return `the stage split has ${split.length} stages, the schedule ${stages}`;
  let next = 0;
  for (const [a, b] of split) {
    if (a !== next || !(b > a))
      return `stage split [${split.map((u) => `[${u[0]},${u[1]})`).join(' ')}] is not contiguous, non-empty runs from unit 0`;
    next = b;
  }
  return next === units
    ? null
    : `the stage split covers ${next} of the ${units} units (embedding, ${c.numHiddenLayers} layers, head)`;
}
