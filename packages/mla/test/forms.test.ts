// The absorbed inference form equals the training form on random weights, across configs.
import { describe, expect, it } from 'vitest';
import { noGrad } from '@dsv3/core';
import { MLA, type MLAConfig } from '../src/index.js';
import { randomize, randT, relErr } from './helpers.js';

const base: MLAConfig = {
  hiddenSize: 48,
  numHeads: 4,
  qLoraRank: 24,
  kvLoraRank: 32,
  qkNopeHeadDim: 16,
  qkRopeHeadDim: 8,
  vHeadDim: 16,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  maxPositionEmbeddings: 256,
  ropeScaling: {
    type: 'yarn',
    factor: 4,
    originalMaxPositionEmbeddings: 64,
    betaFast: 32,
    betaSlow: 1,
    mscale: 1,
    mscaleAllDim: 1,
  },
};

const cases: [string, MLAConfig, number, number][] = [
  ['yarn, q lora, B=2 S=7', base, 2, 7],
  ['q_lora_rank null, v != nope, B=3 S=5', { ...base, qLoraRank: null, vHeadDim: 24 }, 3, 5],
  ['no rope scaling, v < nope, odd S=13', { ...base, ropeScaling: null, vHeadDim: 8, numHeads: 3 }, 2, 13],
  ['rotate-half layout, B=1 S=1', { ...base, ropeInterleave: false }, 1, 1],
  ['wide latent, S=31', { ...base, kvLoraRank: 96, qkRopeHeadDim: 16, numHeads: 2 }, 2, 31],
];

describe('absorbed form == training form (f32, random weights)', () => {
  for (const [name, cfg, B, S] of cases) {
    it(name, () => {
      const m = new MLA(cfg, { seed: 3 });
      randomize(m, 100);
      const x = randT([B, S, cfg.hiddenSize], 9);
      noGrad(() => {
        const a = m.forward(x, { startPos: 3 }).dataSync();
        const k = m.forwardAbsorbed(x, { startPos: 3 }).dataSync();
        const c = m.forwardAbsorbed(x, { startPos: 3, impl: 'composed' }).dataSync();
        const e1 = relErr(k, a);
        const e2 = relErr(c, a);
        expect(e1, `kernel ${e1}`).toBeLessThan(1e-5);
        expect(e2, `composed ${e2}`).toBeLessThan(1e-5);
      });
    });
  }
});

describe('absorbed CPU inference path (per-head W_UK / W_UV laid out once)', () => {
  it('agrees with the general absorbed path and follows kv_b_proj when its weights are replaced', () => {
    const m = new MLA(base, { seed: 3 });
    randomize(m, 100);
    const x = randT([2, 2, base.hiddenSize], 9); // 4 query rows: decode-sized, the path's limit
    for (const seed of [100, 200]) {
      if (seed !== 100) randomize(m, seed); // new kv_b_proj tensor: the laid-out weights must be rebuilt
      const general = m.forwardAbsorbed(x, { startPos: 3 }).dataSync(); // gradient recording on: general path
      const fast = noGrad(() => m.forwardAbsorbed(x, { startPos: 3 }).dataSync());
      const train = noGrad(() => m.forward(x, { startPos: 3 }).dataSync());
      expect(relErr(fast, general), `seed ${seed}`).toBeLessThan(1e-6);
      expect(relErr(fast, train), `seed ${seed}`).toBeLessThan(1e-5);
    }
  });
});
