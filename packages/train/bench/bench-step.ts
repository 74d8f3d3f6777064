// The CPU training step the benchmarks time (bench/run.ts against PyTorch) and profile
// (bench/profile-step.ts): the preset's shape with the fp32 recipe, no MTP (HF has none), no
// sequence-wise loss; AdamW (f32 moments, as torch's), clipping and the gate-bias update included;
// random token batches, one micro-batch.
import { AdamW, defaultBackend, Rng } from '@dsv3/core';
import {
  applyPrecision,
  buildModel,
  parseTrainConfig,
  PRESET_CONFIGS,
  trainStep,
  type TrainPreset,
} from '../src/index.js';

export interface BenchStepResult {
  /** wall and process CPU seconds of the step */
  wall: number;
  cpu: number;
  loss: number;
}

/** The bench's training config of a preset (building nothing, so the torch side can run first). */
export function benchConfig(preset: TrainPreset) {
  const p = PRESET_CONFIGS[preset];
  const seqs = preset === 'tiny' ? 8 : 2;
  return parseTrainConfig({
    ...p,
    precision: 'fp32',
    mtp: { depth: 0, lambda: 0 },
    balance: { biasUpdateSpeed: 0.001, sequenceAuxAlpha: 0 },
    batch: { sequences: seqs, microBatch: seqs, seqLen: p.batch.seqLen, ramp: null },
    optimizer: { momentDType: 'f32' },
  });
}

/** `recycleActivations: false` leaves the step's activations to the garbage collector (for A/Bs). */
export function benchStep(preset: TrainPreset, opts: { recycleActivations?: boolean } = {}) {
  const cfg = benchConfig(preset);
  const seqs = cfg.batch.sequences;
  const model = buildModel(cfg, defaultBackend());
  applyPrecision(model, 'fp32');
  model.train();
  const params = model.parameters();
  const opt = new AdamW(params, { lr: 1e-4, betas: [0.9, 0.95], weightDecay: 0.1 });
  const rng = new Rng(1);
  const S = cfg.batch.seqLen;
  const vocab = model.config.vocabSize;
  const step = async (): Promise<BenchStepResult> => {
    const sequences = Array.from({ length: seqs }, () => Int32Array.from({ length: S }, () => rng.integer(0, vocab)));
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    const r = await trainStep(model, [opt], params, {
      sequences,
      microBatch: seqs,
      lr: 1e-4,
      mtpLambda: 0,
      seqAuxAlpha: 0,
      biasUpdateSpeed: 0.001,
      clipNorm: 1,
      recycleActivations: opts.recycleActivations ?? true,
    });
    const c = process.cpuUsage(c0);
    return { wall: (performance.now() - t0) / 1000, cpu: (c.user + c.system) / 1e6, loss: r.loss };
  };
  return { cfg, model, sequences: seqs, seqLen: S, step };
}
