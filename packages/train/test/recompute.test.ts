// Selective recomputation changes memory, not results: the same gradients with it on (bitwise: the
// recomputed ops' gradient contributions are summed in the same order as without it).
import { describe, expect, it } from 'vitest';
import { RMSNorm, SwiGLU } from '@dsv3/core';
import { relativeError } from '@dsv3/core/testing';
import { applyPrecision, applyRecompute, batchTensor, buildModel, moeLayers, TokenStream } from '../src/index.js';
import { byteLevelTokenizer } from '@dsv3/model';
import { microConfig } from './helpers.js';

describe('selective recomputation', () => {
  for (const precision of ['fp32', 'fp8'] as const) {
    it(`gives the same gradients (${precision} recipe, MTP included; relative L2 ≤ 1e-6 per parameter)`, async () => {
      const cfg = microConfig({ precision });
      const seqs = await new TokenStream({
        path: null,
        tokenizer: byteLevelTokenizer(),
        seqLen: 32,
        seed: 0,
        evalFraction: 0,
        shuffleBuffer: 4,
      }).next(2);
      const grads = async (recompute: boolean) => {
        const model = buildModel(cfg);
        applyPrecision(model, precision);
        if (recompute) {
          const n = applyRecompute(model);
          const expected =
            model.modules().filter((m) => m instanceof RMSNorm || m instanceof SwiGLU).length +
            2 * (model.config.numHiddenLayers + model.mtp.length);
          expect(n).toBe(expected);
        }
        model.train();
        const ids = batchTensor(seqs, undefined);
        const { loss } = model.loss(ids, { mtpLambda: 0.3 });
        expect(moeLayers(model).length).toBeGreaterThan(0);
        loss.backward();
        return Promise.all(
          model.namedParameters().map(async ([n, p]) => [n, p.grad ? Array.from(await p.grad.data()) : null] as const),
        );
      };
      const plain = await grads(false);
      const re = await grads(true);
      expect(re.map(([n]) => n)).toEqual(plain.map(([n]) => n));
      let worst = 0;
      re.forEach(([n, g], i) => {
        const want = plain[i]![1];
        expect(g === null, n).toBe(want === null);
        if (g && want) worst = Math.max(worst, relativeError(g, want));
      });
      console.log(`recompute (${precision}): worst per-parameter gradient relative L2 ${worst.toExponential(2)}`);
      expect(worst).toBeLessThanOrEqual(1e-6);
    }, 120_000);
  }
});
