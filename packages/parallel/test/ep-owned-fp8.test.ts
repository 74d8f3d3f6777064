// The owner side of expert parallelism with FP8 (W8A8) routed experts: the rows a rank receives go
// through the grouped block-scaled GEMM over the owned experts' bytes only, and equal what the
// one-process W8A8 layer computes for the same rows and experts.
import { describe, expect, it } from 'vitest';
import { noGrad, Rng, tensor, type SwiGLU, type Tensor } from '@dsv3/core';
import { relativeError } from '@dsv3/core/testing';
import { quantizeWeightT, type QuantizedTensor } from '@dsv3/fp8';
import { MoE, type MoEConfig } from '@dsv3/moe';
import { runOwnedExperts } from '../src/ep/owned.js';

// 256 wide (two K blocks), 160 intermediate (a ragged second block), 8 experts
const cfg: MoEConfig = {
  hiddenSize: 256,
  moeIntermediateSize: 160,
  nRoutedExperts: 8,
  numExpertsPerTok: 1,
  nGroup: 1,
  topkGroup: 1,
  normTopkProb: true,
  routedScalingFactor: 1,
  scoringFunc: 'sigmoid',
  nSharedExperts: 0,
};

function fp8Layer(): MoE {
  const moe = new MoE(cfg, { seed: 11 });
  const ex = moe.experts.items as unknown as SwiGLU[];
  const quant = (pick: (m: SwiGLU) => Tensor): QuantizedTensor[] => ex.map((m) => quantizeWeightT(pick(m)));
  moe.useFp8Experts({
    gate: quant((m) => m.gateProj.weight.value),
    up: quant((m) => m.upProj.weight.value),
    down: quant((m) => m.downProj.weight.value),
  });
  return moe;
}

describe('runOwnedExperts with FP8 experts', () => {
  it('equals the one-process W8A8 layer on the owned experts (an owned expert with no rows included)', () => {
    const moe = fp8Layer();
    const owned = [1, 3, 4, 6]; // expert 4 receives no row
    const R = 29;
    const rng = new Rng(5);
    const ids = Int32Array.from({ length: R }, (_, r) => [6, 1, 3, 3, 1][r % 5]!); // received order, unsorted
    const rows = tensor(rng.fillNormal(new Float32Array(R * cfg.hiddenSize), 0, 1), {
      shape: [R, cfg.hiddenSize],
      dtype: 'f32',
    });
    const got = noGrad(() => runOwnedExperts(moe, owned, rows, ids)).dataSync();
    // the one-process layer, each row through its expert with weight 1 (top-1 routing given)
    const want = noGrad(() =>
      moe.routedExperts(
        rows,
        tensor(ids, { shape: [R, 1], dtype: 'i32' }),
        tensor(new Float32Array(R).fill(1), { shape: [R, 1], dtype: 'f32' }),
      ),
    ).dataSync();
    const err = relativeError(got, want);
    console.log(`EP owner FP8 experts vs one-process W8A8: rel ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-6);
    // and a second call (the owned projections are kept) gives the same
    expect(noGrad(() => runOwnedExperts(moe, owned, rows, ids)).dataSync()).toEqual(got);
  });

  it('refuses a row for an expert the rank does not hold', () => {
    const moe = fp8Layer();
    const rows = tensor(new Float32Array(2 * cfg.hiddenSize), { shape: [2, cfg.hiddenSize], dtype: 'f32' });
    expect(() => runOwnedExperts(moe, [0, 2], rows, Int32Array.from([0, 5]))).toThrow(
      /received a row for expert 5, which this rank does not hold/,
    );
  });
});
