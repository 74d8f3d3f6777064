// Single-direction schedules on P ranks, rank r holding stage r: GPipe, 1F1B and ZB1P (ZB-H1).
import type { RankOpWriter } from './writer.js';

/** All forwards, then all (full) backwards. */
export function gpipeRank(w: RankOpWriter, chunks: number): void {
  for (let m = 0; m < chunks; m++) w.forward(0, { stage: w.rank, microBatch: m });
  for (let m = 0; m < chunks; m++) w.backward(0, { stage: w.rank, microBatch: m }, false);
}

/**
 * 1F1B: P−1−r warm-up forwards, then one forward / one backward alternating, then the remaining
 * backwards. With `zeroBubble` (ZB1P) backwards are for inputs only and each rank r lets its weight
 * gradients lag r backwards behind, filling the cool-down gaps 1F1B leaves idle, so no rank holds
 * more activations than under 1F1B.
 */
export function oneFOneBRank(w: RankOpWriter, ranks: number, chunks: number, zeroBubble: boolean): void {
  const stage = w.rank;
  const warmup = Math.min(ranks - 1 - w.rank, chunks);
  const lag = zeroBubble ? Math.min(w.rank, chunks) : 0;
  let f = 0;
  let b = 0;
  const backward = (): void => {
    w.backward(0, { stage, microBatch: b++ }, zeroBubble);
    if (zeroBubble && w.pendingWeights > lag) w.weight();
  };
  for (; f < warmup; ) w.forward(0, { stage, microBatch: f++ });
  while (f < chunks) {
    w.forward(0, { stage, microBatch: f++ });
    backward();
  }
  while (b < chunks) backward();
  while (w.pendingWeights > 0) w.weight();
}
