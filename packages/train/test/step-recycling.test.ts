// trainStep hands each step's activations back to the free list (core's recyclingScope). That must
// change nothing: the logged values and the weights after several steps are bitwise those of steps
// that leave the activations to the collector — with the poison mode on, so a buffer reused while
// something still read it would turn the results into NaN.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdamW, recyclingScopeTotals, setPoisonRecycled } from '@dsv3/core';
import {
  applyPrecision,
  applyRecompute,
  buildModel,
  evaluate,
  trainStep,
  TokenStream,
  type StepResult,
} from '../src/index.js';
import { byteLevelTokenizer } from '@dsv3/model';
import { microConfig } from './helpers.js';

const STEPS = 3;

type Precision = 'fp32' | 'fp8';

async function train(recycle: boolean, precision: Precision, recompute: boolean, sequences: Int32Array[][]) {
  // 64 positions x 2 sequences per micro-batch: the hidden states (4,096 values) and the logits are large
  // enough for the free list
  const cfg = microConfig({ batch: { sequences: 4, microBatch: 2, seqLen: 64, ramp: null } });
  const model = buildModel(cfg);
  applyPrecision(model, precision);
  if (recompute) applyRecompute(model);
  model.train();
  const params = model.parameters();
  const opt = new AdamW(params, { lr: 3e-3, betas: [0.9, 0.95], weightDecay: 0.1 });
  const results: StepResult[] = [];
  // held-out loss after every step: reads whatever the model cached during the step (FP8 weight copies)
  const evals: number[] = [];
  for (const seqs of sequences) {
    results.push(
      await trainStep(model, [opt], params, {
        sequences: seqs,
        microBatch: 2,
        lr: 3e-3,
        mtpLambda: 0.3,
        seqAuxAlpha: 1e-3,
        biasUpdateSpeed: 1e-3,
        clipNorm: 1,
        recycleActivations: recycle,
      }),
    );
    evals.push((await evaluate(model, sequences[0]!, 2)).loss);
  }
  expect(model.mtp.length).toBeGreaterThan(0);
  const weights = model.namedParameters().map(([n, p]) => [n, Array.from(p.value.dataSync())] as const);
  return { results, evals, weights };
}

describe('trainStep with its activations recycled', () => {
  beforeAll(() => {
    setPoisonRecycled(true);
  });
  afterAll(() => {
    setPoisonRecycled(false);
  });

  for (const [precision, recompute] of [
    ['fp32', false],
    ['fp32', true],
    ['fp8', false],
  ] as [Precision, boolean][]) {
    it(`gives bitwise the same losses and weights over ${STEPS} steps (${precision}, MoE, MTP, sequence loss, eval after each step; recompute ${recompute ? 'on' : 'off'})`, async () => {
      const stream = new TokenStream({
        path: null,
        tokenizer: byteLevelTokenizer(),
        seqLen: 64,
        seed: 1,
        evalFraction: 0,
        shuffleBuffer: 8,
      });
      const sequences: Int32Array[][] = [];
      for (let i = 0; i < STEPS; i++) sequences.push(await stream.next(4));
      const plain = await train(false, precision, recompute, sequences);
      const before = recyclingScopeTotals();
      const recycled = await train(true, precision, recompute, sequences);
      const totals = recyclingScopeTotals();
      expect(totals.scopes - before.scopes).toBe(STEPS);
      expect(totals.buffers - before.buffers).toBeGreaterThan(10 * STEPS); // it did recycle
      expect(recycled.results).toEqual(plain.results);
      expect(recycled.evals).toEqual(plain.evals);
      for (const r of recycled.results) expect(Number.isFinite(r.loss)).toBe(true);
      expect(recycled.weights.map(([n]) => n)).toEqual(plain.weights.map(([n]) => n));
      recycled.weights.forEach(([n, w], i) => {
        const want = plain.weights[i]![1];
        const differing = w.findIndex((v, j) => !Object.is(v, want[j]));
        expect(differing, `${n}: first differing element`).toBe(-1);
      });
    }, 120_000);
  }
});
