// buildSchedule(kind, { ranks, chunks }): per rank, the ordered operations of one training step.
import { gpipeRank, oneFOneBRank } from './classic.js';
import { dualPipeRank, dualPipeVRank } from './dualpipe.js';
import { SCHEDULE_KINDS, type Chunk, type Schedule, type ScheduleKind, type ScheduleOptions } from './types.js';
import { RankOpWriter, type OwnerFn } from './writer.js';

/** Why (ranks, chunks) cannot run `kind`, or null when they can. */
export function scheduleError(kind: ScheduleKind, { ranks, chunks }: ScheduleOptions): string | null {
  if (!SCHEDULE_KINDS.includes(kind))
    return `unknown pipeline schedule '${String(kind)}' (expected one of ${SCHEDULE_KINDS.join(', ')})`;
  if (!Number.isInteger(ranks) || ranks < 1) return `${kind}: ranks must be a positive integer, got ${ranks}`;
  if (!Number.isInteger(chunks) || chunks < 1)
    return `${kind}: chunks (micro-batches) must be a positive integer, got ${chunks}`;
  if (kind === 'dualpipe') {
    if (ranks % 2 !== 0)
      return `dualpipe: needs an even number of ranks (rank r pairs with rank P−1−r), got ${ranks}; use ${ranks + 1} ranks or dualpipev`;
    if (chunks % 2 !== 0 || chunks < 2 * ranks)
      return `dualpipe: needs an even number of chunks ≥ 2·ranks = ${2 * ranks} (half enter at each end), got ${chunks}`;
  }
  if (kind === 'dualpipev' && chunks < 2 * ranks)
    return `dualpipev: needs chunks ≥ 2·ranks = ${2 * ranks}, got ${chunks}`;
  return null;
}

/** Number of model stages a schedule splits the model into. */
export function stageCount(kind: ScheduleKind, ranks: number): number {
  return kind === 'dualpipev' ? 2 * ranks : ranks;
}

/** The pipeline ranks holding each stage's parameters (DualPipe: stage s on ranks s and P−1−s). */
export function stageHolders(kind: ScheduleKind, ranks: number): number[][] {
  return Array.from({ length: stageCount(kind, ranks) }, (_, s) => {
    if (kind === 'dualpipe') return [...new Set([s, ranks - 1 - s])].sort((a, b) => a - b);
    if (kind === 'dualpipev') return [s < ranks ? s : 2 * ranks - 1 - s];
    return [s];
  });
}

/** Which rank runs `chunk` under `kind` (DualPipe: the copy the micro-batch's stream uses). */
export function ownerFn(kind: ScheduleKind, ranks: number, chunks: number): OwnerFn {
  switch (kind) {
    case 'dualpipe':
      return (stage, microBatch) => (microBatch < chunks / 2 ? stage : ranks - 1 - stage);
    case 'dualpipev':
      return (stage) => (stage < ranks ? stage : 2 * ranks - 1 - stage);
    default:
      return (stage) => stage;
  }
}

export function chunkOwner(s: Schedule, c: Chunk): number {
  return ownerFn(s.kind, s.ranks, s.chunks)(c.stage, c.microBatch);
}

export function buildSchedule(kind: ScheduleKind, opts: ScheduleOptions): Schedule {
  const err = scheduleError(kind, opts);
  if (err) throw new RangeError(err);
  const { ranks, chunks } = opts;
  const stages = stageCount(kind, ranks);
  const owner = ownerFn(kind, ranks, chunks);
  const ops = [];
  for (let r = 0; r < ranks; r++) {
    const w = new RankOpWriter(r, stages, owner);
    if (kind === 'gpipe') gpipeRank(w, chunks);
    else if (kind === '1f1b' || kind === 'zb1p') oneFOneBRank(w, ranks, chunks, kind === 'zb1p');
    else if (kind === 'dualpipe') dualPipeRank(w, ranks, chunks);
    else dualPipeVRank(w, ranks, chunks);
    ops.push(w.ops);
  }
  const stageOwners = stageHolders(kind, ranks);
  const rankStages = Array.from({ length: ranks }, (_, r) => stageOwners.flatMap((o, s) => (o.includes(r) ? [s] : [])));
  return { kind, ranks, chunks, stages, stageOwners, rankStages, ops };
}
