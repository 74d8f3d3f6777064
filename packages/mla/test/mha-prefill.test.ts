// A fresh prompt through forwardAbsorbed with a cache runs in the MHA form (kv_b up-projection + core's
// ropeAttention) from mhaPrefillConfig.minTokens tokens. Checked against the all-absorbed run and a
// float64 training-form reference on ragged S and batch: the cache it leaves is bitwise the absorbed
// path's (the same projections and rotation write it), so a decode step continuing from it is bitwise
// the all-absorbed run's; its prefill output sits within BOUND of the f64 reference, as the absorbed
// form's does.
import { afterEach, describe, expect, it } from 'vitest';
import { expectSameBits } from '@dsv3/core/testing';
import { cast, concat, noGrad, type Tensor } from '@dsv3/core';
import { MLA, mhaPrefillConfig, PagedLatentCache, type MLAConfig } from '../src/index.js';
import { randomize, randT, relErr } from './helpers.js';

// f32 rounding: sums of up to kvLoraRank = 64 terms (~sqrt(64)·2^-24 ≈ 5e-7 relative each, random signs
// cancelling) through about six chained products and a softmax; measured 2–4e-7 against f64 for either
// form on these shapes, so 2e-6 leaves ~5x.
const BOUND = 2e-6;

const cfg: MLAConfig = {
  hiddenSize: 48,
  numHeads: 4,
  qLoraRank: 24,
  kvLoraRank: 64,
  qkNopeHeadDim: 16,
  qkRopeHeadDim: 8,
  vHeadDim: 12,
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

const saved = mhaPrefillConfig.minTokens;
afterEach(() => {
  mhaPrefillConfig.minTokens = saved;
});

function model(dtype: 'f32' | 'f64'): MLA {
  const m = new MLA(cfg, { seed: 3, dtype });
  randomize(m, 100, dtype);
  return m;
}

const newCache = (): PagedLatentCache =>
  new PagedLatentCache({
    numLayers: 2,
    kvLoraRank: cfg.kvLoraRank,
    ropeDim: cfg.qkRopeHeadDim,
    numBlocks: 32,
    blockSize: 8,
  });

/** Prefill x [B,S] into a fresh cache (layer 1), then decode one token per row; outputs and the cache. */
function prefillThenDecode(m: MLA, x: Tensor, next: Tensor, minTokens: number) {
  mhaPrefillConfig.minTokens = minTokens;
  const cache = newCache();
  const seqIds = Array.from({ length: x.shape[0]! }, () => cache.allocate());
  const prefill = m.forwardAbsorbed(x, { cache, layer: 1, seqIds }).dataSync() as Float32Array;
  const decode = m.forwardAbsorbed(next, { cache, layer: 1, seqIds }).dataSync() as Float32Array;
  return { prefill, decode, cache, seqIds };
}

/** f64 training form over prompt + next token: the prompt's rows and the last row, as f32 for relErr. */
function reference(x: Tensor, next: Tensor) {
  const m = model('f64');
  const [B, S] = x.shape as [number, number];
  const D = cfg.hiddenSize;
  const full = m.forward(concat([cast(x, 'f64'), cast(next, 'f64')], 1)).dataSync();
  const prefill = new Float32Array(B * S * D);
  const decode = new Float32Array(B * D);
  for (let b = 0; b < B; b++) {
    prefill.set(full.subarray(b * (S + 1) * D, (b * (S + 1) + S) * D), b * S * D);
    decode.set(full.subarray((b * (S + 1) + S) * D, (b + 1) * (S + 1) * D), b * D);
  }
  return { prefill, decode };
}

describe('fresh prompt in the MHA form (forwardAbsorbed with an empty cache)', () => {
  for (const [B, S] of [
    [1, 5],
    [2, 17],
    [3, 33],
    [1, 64],
  ] as const) {
    it(`B=${B} S=${S}: cache bitwise the absorbed path's; prefill within ${BOUND} of f64, decode then bitwise`, () => {
      noGrad(() => {
        const m = model('f32');
        const x = randT([B, S, cfg.hiddenSize], 9 + S);
        const next = randT([B, 1, cfg.hiddenSize], 11 + S);
        const mha = prefillThenDecode(m, x, next, 1);
        const abs = prefillThenDecode(m, x, next, Number.POSITIVE_INFINITY);
        const ref = reference(x, next);
        for (let b = 0; b < B; b++) {
          const [p, q] = [mha.cache.read(1, mha.seqIds[b]!), abs.cache.read(1, abs.seqIds[b]!)];
          expectSameBits(p.ckv, q.ckv, 'p.ckv');
          expect(Array.from(p.kr)).toEqual(Array.from(q.kr));
          expect(mha.cache.length(mha.seqIds[b]!, 0)).toBe(0);
        }
        expect(Array.from(mha.decode)).toEqual(Array.from(abs.decode));
        // the MHA form really ran: its rounding differs from the absorbed form's
        expect(Buffer.from(mha.prefill.buffer).equals(Buffer.from(abs.prefill.buffer))).toBe(false);
        for (const [name, r] of [
          ['mha', mha],
          ['absorbed', abs],
        ] as const) {
          const ep = relErr(r.prefill, ref.prefill);
          const ed = relErr(r.decode, ref.decode);
          expect(ep, `${name} prefill ${ep}`).toBeLessThan(BOUND);
          expect(ed, `${name} decode ${ed}`).toBeLessThan(BOUND);
        }
      });
    });
  }

  it('below minTokens, with a prefix in any row, or with a gradient, the absorbed path runs (bitwise)', () => {
    const m = model('f32');
    const x = randT([2, 6, cfg.hiddenSize], 5);
    const absorbedRun = (minTokens: number, prefixRow: number | null): Float32Array =>
      noGrad(() => {
        mhaPrefillConfig.minTokens = minTokens;
        const cache = newCache();
        const seqIds = [cache.allocate(), cache.allocate()];
        if (prefixRow !== null)
          cache.append(1, seqIds[prefixRow]!, new Float32Array(cfg.kvLoraRank), new Float32Array(cfg.qkRopeHeadDim));
        return m.forwardAbsorbed(x, { cache, layer: 1, seqIds }).dataSync() as Float32Array;
      });
    const base = absorbedRun(Number.POSITIVE_INFINITY, 1);
    expect(Array.from(absorbedRun(1, 1))).toEqual(Array.from(base));
    expect(Array.from(absorbedRun(7, null))).toEqual(Array.from(absorbedRun(Number.POSITIVE_INFINITY, null)));
    // with a gradient (the parameters require one) both runs take the differentiable absorbed path
    const gradRun = (minTokens: number): Float32Array => {
      mhaPrefillConfig.minTokens = minTokens;
      const cache = newCache();
      return m
        .forwardAbsorbed(x, { cache, layer: 1, seqIds: [cache.allocate(), cache.allocate()] })
        .dataSync() as Float32Array;
    };
    expect(Array.from(gradRun(1))).toEqual(Array.from(gradRun(Number.POSITIVE_INFINITY)));
  });

  it('a malformed call still gets the absorbed path’s errors', () => {
    mhaPrefillConfig.minTokens = 1;
    const m = model('f32');
    const x = randT([2, 4, cfg.hiddenSize], 5);
    const cache = newCache();
    const a = cache.allocate();
    noGrad(() => {
      expect(() => m.forwardAbsorbed(x, { cache, seqIds: [a] })).toThrow(/one per batch row/);
      expect(() => m.forwardAbsorbed(x, { cache, seqIds: [a, a] })).toThrow(/distinct/);
      expect(() => m.forwardAbsorbed(x, { cache, seqIds: [a, cache.allocate()], startPos: 2 })).toThrow(/positions/);
      expect(() => m.forwardAbsorbed(x, { cache, layer: 2, seqIds: [a, cache.allocate()] })).toThrow(/out of range/);
    });
  });
});
