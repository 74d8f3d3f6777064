// Metrics of a run: one JSON object per line in OUT/metrics.jsonl.
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { writeFileAtomic } from '@dsv3/core';

export interface StepRecord {
  kind: 'train';
  step: number;
  /** Tokens trained on so far (all steps up to and including this one). */
  tokens: number;
  /** Total objective: CE + λ·MTP + α·balance. */
  loss: number;
  /** Next-token cross-entropy. */
  mainLoss: number;
  /** Mean MTP cross-entropy over depths (before λ); null without MTP. */
  mtpLoss: number | null;
  /** Σ over MoE layers of the sequence-wise balance loss (α included). */
  balanceLoss: number;
  gradNorm: number;
  lr: number;
  mtpLambda: number;
  batchSequences: number;
  /** MaxVio of each MoE layer's expert loads over this step's tokens (main layers, then MTP blocks). */
  maxVio: number[];
  maxVioMean: number;
  /** Wall-clock fields (differ between runs of the same config). */
  tokensPerSec: number;
  mfu: number;
  elapsedSec: number;
}

export interface EvalRecord {
  kind: 'eval';
  step: number;
  tokens: number;
  evalLoss: number;
  evalTokens: number;
}

export type MetricRecord = StepRecord | EvalRecord;

/** Fields that depend on the clock, not on the computation. */
export const WALL_CLOCK_FIELDS = ['tokensPerSec', 'mfu', 'elapsedSec'] as const;

export class MetricsLog {
  constructor(readonly path: string) {}

  append(r: MetricRecord): void {
    appendFileSync(this.path, `${JSON.stringify(r)}\n`);
  }

  read(): MetricRecord[] {
    return readMetrics(this.path);
  }

  /** Drops records after `step` (a resumed run replays them). */
  truncateAfter(step: number): void {
    const keep = this.read().filter((r) => r.step <= step);
    writeFileAtomic(this.path, [new TextEncoder().encode(keep.map((r) => `${JSON.stringify(r)}\n`).join(''))]);
  }
}

export function readMetrics(path: string): MetricRecord[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l, i) => {
      try {
        return JSON.parse(l) as MetricRecord;
      } catch {
        throw new Error(`${path}:${i + 1}: not a JSON metrics record`);
      }
    });
}
