// DualPipe and DualPipeV per-rank operation orders, following the phases of DeepSeek's step()
// (section 5 of docs/deepseek-v3-reference.md).
import type { Chunk, Phase } from './types.js';
import type { RankOpWriter } from './writer.js';

/** Hands out each phase's next chunk to forward and to backward, in micro-batch order. */
interface ChunkCursor {
  nextForward(phase: Phase): Chunk;
  nextBackward(phase: Phase): Chunk;
}

/** The step() phases shared by both variants; `half` is H (DualPipe) or P (DualPipeV), `h` the rank's position. */
function runPhases(
  w: RankOpWriter,
  cur: ChunkCursor,
  half: number,
  h: number,
  mainSteps: number,
  middle: boolean,
): void {
  const F = (p: Phase): void => w.forward(p, cur.nextForward(p));
  const B = (p: Phase, deferW = false): void => w.backward(p, cur.nextBackward(p), deferW);
  const FB = (fp: Phase, bp: Phase): void => w.forwardBackward(fp, cur.nextForward(fp), bp, cur.nextBackward(bp));
  const outer = half - h - 1;
  for (let i = 0; i < 2 * outer; i++) F(0);
  for (let i = 0; i < h + 1; i++) {
    F(0);
    F(1);
  }
  for (let i = 0; i < outer; i++) {
    B(1, true);
    w.weight();
    F(1);
  }
  for (let i = 0; i < mainSteps; i++) {
    if (i === 0 && middle) {
      // DeepSeek runs the middle ranks' first pair unoverlapped: it shortens the bubble.
      F(0);
      B(1);
    } else {
      FB(0, 1);
    }
    FB(1, 0);
  }
  for (let i = 0; i < outer; i++) {
    B(1);
    FB(1, 0);
  }
  // Weight-gradient deferral switches on half-way through, before B1 when h is odd, before B0 when even.
  const steps6 = h + 1;
  let zb = false;
  for (let i = 0; i < steps6; i++) {
    if (i === Math.floor(steps6 / 2) && h % 2 === 1) zb = true;
    B(1, zb);
    if (i === Math.floor(steps6 / 2) && h % 2 === 0) zb = true;
    B(0, zb);
  }
  for (let i = 0; i < outer; i++) {
    w.weight();
    B(0, true);
  }
  for (let i = 0; i < h + 1; i++) w.weight();
  if (w.pendingWeights !== 0)
    throw new Error(`internal: rank ${w.rank} ends with ${w.pendingWeights} deferred weight gradients`);
}

/**
 * DualPipe on P (even) ranks: micro-batches 0..C/2−1 enter at rank 0 and run stages 0..P−1 on ranks
 * 0..P−1; micro-batches C/2..C−1 enter at rank P−1 and run stage s on rank P−1−s.
 */
export function dualPipeRank(w: RankOpWriter, ranks: number, chunks: number): void {
  const r = w.rank;
  const secondHalf = r >= ranks / 2 ? 1 : 0;
  const next = { f: [0, 0], b: [0, 0] };
  // direction 0: the stream entering at rank 0; phase p on this rank is direction p ^ secondHalf.
  const chunk = (dir: number, k: number): Chunk => ({
    stage: dir === 0 ? r : ranks - 1 - r,
    microBatch: dir === 0 ? k : chunks / 2 + k,
  });
  const cur: ChunkCursor = {
    nextForward: (p) => chunk(p ^ secondHalf, next.f[p ^ secondHalf]!++),
    nextBackward: (p) => chunk(p ^ secondHalf, next.b[p ^ secondHalf]!++),
  };
  const h = Math.min(r, ranks - 1 - r);
  const middle = r === ranks / 2 - 1 || r === ranks / 2;
  runPhases(w, cur, ranks / 2, h, chunks / 2 - ranks + h + 1, middle);
}

/** DualPipeV on P ranks, 2P stages: rank r holds stage r (phase 0) and stage 2P−1−r (phase 1). */
export function dualPipeVRank(w: RankOpWriter, ranks: number, chunks: number): void {
  const r = w.rank;
  const next = { f: [0, 0], b: [0, 0] };
  const chunk = (p: Phase, k: number): Chunk => ({ stage: p === 0 ? r : 2 * ranks - 1 - r, microBatch: k });
  const cur: ChunkCursor = {
    nextForward: (p) => chunk(p, next.f[p]!++),
    nextBackward: (p) => chunk(p, next.b[p]!++),
  };
  runPhases(w, cur, ranks, r, chunks - 2 * ranks + r + 1, r === ranks - 1);
}
