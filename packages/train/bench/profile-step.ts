// Profiles the CPU training step of a preset (the same step bench/run.ts times against PyTorch):
//   node --cpu-prof --import tsx --conditions=@dsv3/source bench/profile-step.ts [tiny|mini] [--steps N] [--ops]
// `--ops` prints the time spent in each kernel and autograd rule (core's op timing hook).
import { AdamW, defaultBackend, Rng, setGemmThreads, startOpProfile, stopOpProfile } from '@dsv3/core';
import {
  applyPrecision,
  buildModel,
  parseTrainConfig,
  PRESET_CONFIGS,
  trainStep,
  type TrainPreset,
} from '../src/index.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const preset = (args.find((a) => a === 'tiny' || a === 'mini') ?? 'tiny') as TrainPreset;
const steps = Number(flag('--steps', '3'));
setGemmThreads(Number(flag('--threads', '1')));
const p = PRESET_CONFIGS[preset];
const seqs = preset === 'tiny' ? 8 : 2;
const cfg = parseTrainConfig({
  ...p,
  precision: 'fp32',
  mtp: { depth: 0, lambda: 0 },
  balance: { biasUpdateSpeed: 0.001, sequenceAuxAlpha: 0 },
  batch: { sequences: seqs, microBatch: seqs, seqLen: p.batch.seqLen, ramp: null },
  optimizer: { momentDType: 'f32' },
});
const model = buildModel(cfg, defaultBackend());
applyPrecision(model, 'fp32');
model.train();
const params = model.parameters();
const opt = new AdamW(params, { lr: 1e-4, betas: [0.9, 0.95], weightDecay: 0.1 });
const rng = new Rng(1);
const S = cfg.batch.seqLen;
const vocab = model.config.vocabSize;
const step = async () => {
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
  });
  const c = process.cpuUsage(c0);
  return [performance.now() - t0, r.loss, (c.user + c.system) / 1000] as const;
};
await step();
if (args.includes('--ops')) startOpProfile();
for (let i = 0; i < steps; i++) {
  const [ms, loss, cpuMs] = await step();
  console.log(`step ${i}: ${ms.toFixed(0)} ms (${cpuMs.toFixed(0)} ms of CPU), loss ${loss.toFixed(4)}`);
}
if (args.includes('--ops')) {
  console.log('\nop (kernel, or grad:rule inclusive of its kernels) | calls/step | ms/step');
  for (const [name, t] of stopOpProfile().slice(0, 40))
    console.log(
      `${name.padEnd(28)} ${(t.calls / steps).toFixed(0).padStart(7)} ${(t.ms / steps).toFixed(1).padStart(9)}`,
    );
}
