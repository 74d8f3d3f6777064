import { describe, expect, it } from 'vitest';
import {
  batchSequences,
  learningRate,
  mtpLambda,
  parseTrainConfig,
  PRESET_CONFIGS,
  TrainConfigError,
} from '../src/index.js';
import { microConfigInput } from './helpers.js';

describe('training config', () => {
  it('accepts the presets and fills defaults', () => {
    for (const p of Object.values(PRESET_CONFIGS)) expect(() => parseTrainConfig(p)).not.toThrow();
    const c = parseTrainConfig(microConfigInput());
    expect(c.optimizer).toEqual({ betas: [0.9, 0.95], eps: 1e-8, weightDecay: 0.1, clipNorm: 1, momentDType: 'bf16' });
    expect(c.balance.biasUpdateSpeed).toBe(0.001);
    expect(c.balance.sequenceAuxAlpha).toBe(0.0001);
  });

  it('lists every problem at once and rejects unknown keys', () => {
    const bad = {
      ...microConfigInput(),
      steps: -1,
      precision: 'fp16',
      batch: { sequences: 4, microBatch: 2, seqLen: 2 },
      optimiser: {},
    };
    let msg = '';
    try {
      parseTrainConfig(bad, 'bad.json');
    } catch (e) {
      expect(e).toBeInstanceOf(TrainConfigError);
      msg = (e as Error).message;
    }
    expect(msg).toMatch(/invalid training config \(bad\.json\)/);
    expect(msg).toMatch(/steps: /);
    expect(msg).toMatch(/precision: /);
    expect(msg).toMatch(/batch\.seqLen: /);
    expect(msg).toMatch(/optimiser/);
  });

  it('needs exactly one model source; reads a parallel layout and rejects an unknown schedule', () => {
    expect(() => parseTrainConfig({ ...microConfigInput(), model: { preset: 'tiny', config: 'x.json' } })).toThrow(
      /exactly one of model\.preset, model\.config or model\.checkpoint/,
    );
    expect(
      parseTrainConfig({
        ...microConfigInput(),
        parallel: { expertParallel: 2, pipelineParallel: 2, schedule: 'dualpipe' },
      }).parallel,
    ).toMatchObject({
      expertParallel: 2,
      pipelineParallel: 2,
      schedule: 'dualpipe',
      zero1: false,
      overlapForwardBackward: true,
    });
    expect(
      parseTrainConfig({ ...microConfigInput(), parallel: { overlapForwardBackward: false } }).parallel
        .overlapForwardBackward,
    ).toBe(false);
    expect(() => parseTrainConfig({ ...microConfigInput(), parallel: { overlapForwardBackward: 'no' } })).toThrow(
      /parallel\.overlapForwardBackward/,
    );
    expect(() => parseTrainConfig({ ...microConfigInput(), parallel: { schedule: 'zigzag' } })).toThrow(
      /parallel\.schedule/,
    );
    expect(() =>
      parseTrainConfig({ ...microConfigInput(), batch: { sequences: 6, microBatch: 4, seqLen: 32 } }),
    ).toThrow(/multiples of microBatch/);
  });
});

describe('schedules', () => {
  it('V3 learning rate: linear warm-up, constant, cosine to minLr, constant tail phases', () => {
    const lr = learningRate({
      type: 'v3',
      lr: 2.2e-4,
      warmupSteps: 10,
      constantSteps: 20,
      decaySteps: 40,
      minLr: 2.2e-5,
      tail: [
        { steps: 5, lr: 2.2e-5 },
        { steps: 5, lr: 7.3e-6 },
      ],
    });
    expect(lr(0)).toBeCloseTo(2.2e-5, 12);
    expect(lr(9)).toBeCloseTo(2.2e-4, 12);
    expect(lr(10)).toBe(2.2e-4);
    expect(lr(29)).toBe(2.2e-4);
    expect(lr(50)).toBeCloseTo(2.2e-5 + 0.5 * (2.2e-4 - 2.2e-5), 12); // halfway through the cosine
    expect(lr(72)).toBe(2.2e-5);
    expect(lr(76)).toBe(7.3e-6);
    expect(lr(10_000)).toBe(7.3e-6);
  });

  it('WSD and the batch-size ramp in whole micro-batches', () => {
    const wsd = learningRate({
      type: 'wsd',
      lr: 1,
      warmupSteps: 0,
      stableSteps: 10,
      decaySteps: 10,
      minLr: 0,
      shape: 'linear',
    });
    expect([wsd(0), wsd(9), wsd(15), wsd(20)]).toEqual([1, 1, 0.5, 0]);
    const b = { sequences: 16, microBatch: 4, seqLen: 8, ramp: { from: 4, steps: 6 } };
    expect([0, 1, 2, 3, 4, 5, 6, 100].map((s) => batchSequences(b, s))).toEqual([4, 4, 8, 8, 12, 12, 16, 16]);
    expect(
      [0, 9, 10].map((s) => mtpLambda({ depth: 1, lambda: 0.3, later: { fromStep: 10, lambda: 0.1 } }, s)),
    ).toEqual([0.3, 0.3, 0.1]);
  });
});
