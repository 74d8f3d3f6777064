// A training layout (data, pipeline, expert, tensor parallel degrees and the pipeline schedule) and the
// workload it runs; what makes one impossible, said plainly.
import type { ModelConfig } from '@dsv3/model';
import { scheduleError } from '../pipeline/schedule.js';
import type { ScheduleKind } from '../pipeline/types.js';

export interface TrainLayout {
  dp: number;
  pp: number;
  /** Expert-parallel degree: routed experts sharded over ep of the dp·tp ranks of a stage. */
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
}

export const worldSize = (l: TrainLayout): number => l.dp * l.pp * l.tp;

/** Micro-batches each pipeline runs per step. */
export const chunksOf = (l: TrainLayout, w: TrainWorkload): number => w.globalBatch / (l.dp * w.microBatch);

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
  if ((l.dp * l.tp) % l.ep !== 0)
    out.push(
      `ep=${l.ep} must divide dp·tp=${l.dp * l.tp} (expert-parallel groups are formed from a stage's data/tensor-parallel ranks)`,
    );
  if (c.nRoutedExperts % l.ep !== 0) out.push(`ep=${l.ep} must divide the ${c.nRoutedExperts} routed experts`);
  if (c.numHeads % l.tp !== 0) out.push(`tp=${l.tp} must divide the ${c.numHeads} attention heads`);
  if (w.globalBatch % (l.dp * w.microBatch) !== 0)
    out.push(`global batch ${w.globalBatch} is not a multiple of dp·micro-batch = ${l.dp * w.microBatch}`);
  else {
    const err = scheduleError(l.schedule, { ranks: l.pp, chunks: chunksOf(l, w) });
    if (err) out.push(`${err} (chunks = global batch / (dp·micro-batch))`);
  }
  if (w.maxNodesPerToken !== null && (!Number.isInteger(w.maxNodesPerToken) || w.maxNodesPerToken < 1))
    out.push(`maxNodesPerToken must be a positive integer or null, got ${w.maxNodesPerToken}`);
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
