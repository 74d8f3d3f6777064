// The device verification op (mtp.verify) on the CPU kernel: the token a verification emits follows the
// target distribution p whatever q the draft came from (chi-square over thousands of sequences verified in
// one call, each with its own counters); a draft drawn from q = p is always accepted; after acceptance
// the bonus token follows the next row's p; bad input is refused with the reason.
import { describe, expect, it } from 'vitest';
import { Rng, tensor, type Tensor } from '@dsv3/core';
import {
  argmax,
  probabilities,
  readTokens,
  readVerdicts,
  sampleTokens,
  samplingTensors,
  verifyDrafts,
  type SamplingOptions,
} from '../src/index.js';
import { chiSquareTest } from './helpers.js';

const V = 9;
const row = (seed: number, scale = 1.5): number[] => {
  const r = new Rng(seed);
  return Array.from({ length: V }, () => r.normal() * scale);
};
const P0 = row(1);
const P1 = row(2);
const Q = P0.map((x, i) => x + row(3, 1.2)[i]!);
const B = 6000;

/** B copies of `rows` ([R, V] each) as f32 [B, R, V]. */
function repeat(rows: number[][]): Tensor {
  const flat = new Float32Array(B * rows.length * V);
  const one = rows.flat();
  for (let b = 0; b < B; b++) flat.set(one, b * one.length);
  return tensor(flat, { shape: [B, rows.length, V], dtype: 'f32' });
}

describe('device verification (CPU kernel)', () => {
  const target: SamplingOptions = { temperature: 0.8, topK: 7 };
  const cases: [string, number[], 'greedy' | SamplingOptions][] = [
    ['sampled drafts, q ≠ p', Q, { temperature: 1.2, topP: 0.9 }],
    ['greedy drafts (one-hot q)', Q, 'greedy'],
    ['sampled drafts, q = p', P0, target],
  ];
  for (const [name, qLogits, draft] of cases) {
    it(`the emitted token follows p and the bonus token p's next row: ${name}`, async () => {
      // the drafts, one per sequence, drawn on the device from q with counters of their own
      const qRows = repeat([qLogits]);
      const drafts =
        draft === 'greedy'
          ? Array.from({ length: B }, () => [argmax(qLogits)])
          : (
              await readTokens(
                sampleTokens(
                  qRows.reshape([B, V]),
                  samplingTensors(Array.from({ length: B }, (_, b) => ({ ...draft, seed: 5, counter: 2 * b }))),
                ),
              )
            ).map((x) => [x]);
      const verdicts = await readVerdicts(
        verifyDrafts(
          repeat([P0, P1]),
          draft === 'greedy' ? null : qRows,
          drafts,
          Array.from({ length: B }, (_, b) => ({ target, draft, seed: 5, counter: 2 * b + 1 })),
        ),
      );
      const first = new Array(V).fill(0);
      const bonus = new Array(V).fill(0);
      verdicts.forEach((v, b) => {
        first[v.accepted ? drafts[b]![0]! : v.next]++;
        if (v.accepted) bonus[v.next]++;
      });
      const p0 = chiSquareTest(first, probabilities(P0, target));
      expect(p0.p, `first token: counts ${first.join(' ')}`).toBeGreaterThan(0.001);
      const accepted = verdicts.filter((v) => v.accepted === 1).length;
      if (qLogits === P0) expect(accepted).toBe(B);
      else {
        expect(accepted).toBeGreaterThan(0);
        expect(accepted).toBeLessThan(B);
      }
      const p1 = chiSquareTest(bonus, probabilities(P1, target));
      expect(p1.p, `bonus token: counts ${bonus.join(' ')}`).toBeGreaterThan(0.001);
    });
  }

  it('refuses bad input with the reason; a target row without finite logits is an error on reading', async () => {
    const t = repeat([P0, P1]).reshape([B, 2, V]).narrow(0, 0, 1);
    const rowOf = { target: { temperature: 1 }, draft: 'greedy' as const, seed: 1, counter: 0 };
    expect(() => verifyDrafts(t, null, [[V]], [rowOf])).toThrow(/expected 1 draft ids in \[0, 9\), got \[9\]/);
    expect(() => verifyDrafts(t, null, [[1]], [{ ...rowOf, target: { temperature: 0 } }])).toThrow(
      /target temperature must be > 0/,
    );
    expect(() => verifyDrafts(t, null, [[1]], [{ ...rowOf, draft: { temperature: 1 } }])).toThrow(/no draft logits/);
    const nan = tensor(new Float32Array(2 * V).fill(Number.NaN), { shape: [1, 2, V], dtype: 'f32' });
    await expect(readVerdicts(verifyDrafts(nan, null, [[1]], [rowOf]))).rejects.toThrow(/no finite logit/);
  });
});
