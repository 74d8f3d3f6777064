// Learning-rate schedules: functions from the step (0-based) to a learning rate.
export type LRSchedule = (step: number) => number;

function checkSteps(name: string, ...n: number[]): void {
  for (const v of n)
    if (!(Number.isInteger(v) && v >= 0))
      throw new RangeError(`${name}: step counts must be non-negative integers, got ${v}`);
}

export function constantLR(lr: number): LRSchedule {
  return () => lr;
}

/** Linear warm-up from 0 to `lr` over `warmup` steps, then constant. */
export function linearWarmup(lr: number, warmup: number): LRSchedule {
  checkSteps('linearWarmup', warmup);
  return (s) => (s < warmup ? (lr * (s + 1)) / warmup : lr);
}

/** Warm-up, then cosine decay from `lr` to `minLR` over `decay` steps, then `minLR`. */
export function cosineLR(lr: number, opts: { warmup?: number; decay: number; minLR?: number }): LRSchedule {
  const warmup = opts.warmup ?? 0;
  const min = opts.minLR ?? 0;
  checkSteps('cosineLR', warmup, opts.decay);
  return (s) => {
    if (s < warmup) return (lr * (s + 1)) / warmup;
    const t = Math.min((s - warmup) / Math.max(opts.decay, 1), 1);
    return min + 0.5 * (lr - min) * (1 + Math.cos(Math.PI * t));
  };
}

/**
 * Warmup-stable-decay: warm up, hold `lr` for `stable` steps, then decay to `minLR` over `decay` steps
 * (cosine, as DeepSeek-V3's 2.2e-4 → 2.2e-5 phase, or linear).
 */
export function warmupStableDecay(
  lr: number,
  opts: { warmup: number; stable: number; decay: number; minLR?: number; shape?: 'cosine' | 'linear' },
): LRSchedule {
  checkSteps('warmupStableDecay', opts.warmup, opts.stable, opts.decay);
  const min = opts.minLR ?? 0;
  return (s) => {
    if (s < opts.warmup) return (lr * (s + 1)) / opts.warmup;
    if (s < opts.warmup + opts.stable) return lr;
    const t = Math.min((s - opts.warmup - opts.stable) / Math.max(opts.decay, 1), 1);
    return opts.shape === 'linear' ? lr + (min - lr) * t : min + 0.5 * (lr - min) * (1 + Math.cos(Math.PI * t));
  };
}
