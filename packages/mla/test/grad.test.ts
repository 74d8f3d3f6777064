// Gradients of the training form (and of the absorbed form's composed path) against central finite
// differences in float64.
import { describe, expect, it } from 'vitest';
import { mul, noGrad, sum, tensor, type Tensor } from '@dsv3/core';
import { parameterGradientCheck } from '@dsv3/core/testing';
import { MLA, type MLAConfig } from '../src/index.js';
import { gradcheck, randArray, randomize, randT, relErr } from './helpers.js';

const cfg: MLAConfig = {
  hiddenSize: 12,
  numHeads: 2,
  qLoraRank: 8,
  kvLoraRank: 10,
  qkNopeHeadDim: 4,
  qkRopeHeadDim: 4,
  vHeadDim: 6,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  maxPositionEmbeddings: 64,
  ropeScaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 8, mscale: 1, mscaleAllDim: 1 },
};

function model(c: MLAConfig): MLA {
  const m = new MLA(c, { dtype: 'f64', seed: 1 });
  randomize(m, 50, 'f64');
  return m;
}

/** Every parameter's autograd gradient vs central differences (up to `maxElems` elements each). */
function checkParams(m: MLA, run: () => Tensor, maxElems = 24, tol = 1e-6): number {
  const probe = noGrad(run);
  const w = tensor(randArray(probe.size, 99, 0.5, 1.5), { shape: [...probe.shape], dtype: 'f64' });
  let worst = 0;
  for (const { name, error } of parameterGradientCheck(() => sum(mul(run(), w)), m.namedParameters(), { maxElems })) {
    worst = Math.max(worst, error);
    expect(error, `${name}: rel ${error}`).toBeLessThan(tol);
  }
  return worst;
}

describe('training-form gradients vs finite differences (f64)', () => {
  it('w.r.t. the input (q LoRA, YaRN, B=2, S=5, startPos 6)', () => {
    const m = model(cfg);
    gradcheck('mla input', (x) => m.forward(x, { startPos: 6 }), [randT([2, 5, cfg.hiddenSize], 3, 'f64')]);
  });

  it('w.r.t. every parameter (q LoRA)', () => {
    const m = model(cfg);
    const x = randT([2, 4, cfg.hiddenSize], 4, 'f64');
    checkParams(m, () =>
      m.forward(x, {
        positions: [
          [0, 1, 2, 3],
          [7, 8, 9, 10],
        ],
      }),
    );
  });

  it('w.r.t. every parameter (direct q_proj, v != nope, no rope scaling)', () => {
    const c = { ...cfg, qLoraRank: null, vHeadDim: 3, ropeScaling: null };
    const m = model(c);
    const x = randT([1, 5, c.hiddenSize], 5, 'f64');
    checkParams(m, () => m.forward(x));
  });

  it('the absorbed form falls back to the differentiable composed path when a gradient is needed', () => {
    const m = model(cfg);
    const x = randT([2, 5, cfg.hiddenSize], 6, 'f64');
    gradcheck('absorbed input', (t) => m.forwardAbsorbed(t, { startPos: 2 }), [x]);
    checkParams(m, () => m.forwardAbsorbed(x, { startPos: 2 }), 12);
    // and its gradients equal the training form's
    const g = (f: (t: Tensor) => Tensor): Float64Array => {
      const leaf = x.detach().requireGrad();
      sum(mul(f(leaf), 1.5)).backward();
      return leaf.grad!.dataSync() as Float64Array;
    };
    expect(
      relErr(
        g((t) => m.forwardAbsorbed(t)),
        g((t) => m.forward(t)),
      ),
    ).toBeLessThan(1e-12);
  });
});
