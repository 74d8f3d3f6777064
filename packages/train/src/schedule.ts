// Step-indexed schedules of the recipe: learning rate, batch size and MTP λ.
import { warmupStableDecay, type LRSchedule } from '@dsv3/core';
import type { TrainConfig } from './config.js';

/** The learning rate at 0-based optimizer step `s`. */
export function learningRate(cfg: TrainConfig['schedule']): LRSchedule {
  switch (cfg.type) {
    case 'constant':
      return (s) => (s < cfg.warmupSteps ? (cfg.lr * (s + 1)) / cfg.warmupSteps : cfg.lr);
    case 'wsd':
      return warmupStableDecay(cfg.lr, {
        warmup: cfg.warmupSteps,
        stable: cfg.stableSteps,
        decay: cfg.decaySteps,
        minLR: cfg.minLr,
        shape: cfg.shape,
      });
    case 'v3': {
      const main = warmupStableDecay(cfg.lr, {
        warmup: cfg.warmupSteps,
        stable: cfg.constantSteps,
        decay: cfg.decaySteps,
        minLR: cfg.minLr,
        shape: 'cosine',
      });
      const decayEnd = cfg.warmupSteps + cfg.constantSteps + cfg.decaySteps;
      return (s) => {
        if (s < decayEnd || cfg.tail.length === 0) return main(s);
        let start = decayEnd;
        for (const phase of cfg.tail) {
          if (s < start + phase.steps) return phase.lr;
          start += phase.steps;
        }
        return cfg.tail.at(-1)!.lr;
      };
    }
  }
}

/** Sequences in the batch of step `s`: the ramp grows linearly in whole micro-batches. */
export function batchSequences(cfg: TrainConfig['batch'], s: number): number {
  if (!cfg.ramp || s >= cfg.ramp.steps) return cfg.sequences;
  const raw = cfg.ramp.from + ((cfg.sequences - cfg.ramp.from) * s) / cfg.ramp.steps;
  return Math.max(cfg.ramp.from, Math.floor(raw / cfg.microBatch) * cfg.microBatch);
}

export function mtpLambda(cfg: TrainConfig['mtp'], s: number): number {
  return cfg.later && s >= cfg.later.fromStep ? cfg.later.lambda : cfg.lambda;
}

export function biasUpdateSpeed(cfg: TrainConfig['balance'], s: number): number {
  return cfg.biasUpdateUntilStep !== null && s >= cfg.biasUpdateUntilStep ? 0 : cfg.biasUpdateSpeed;
}
