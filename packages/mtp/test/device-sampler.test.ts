// The device sampling op on the CPU kernel: greedy equals the host argmax; seeded draws follow the host
// sampler's distributions (chi-square over thousands of rows, each a draw of its own counter: a wrong
// temperature, top-k or top-p fails by orders of magnitude); the same (seed, counter) draws the same id.
import { describe, expect, it } from 'vitest';
import { tensor } from '@dsv3/core';
import {
  argmax,
  probabilities,
  readTokens,
  sampleTokens,
  samplingTensors,
  uniformOf,
  type RowSampling,
} from '../src/index.js';
import { asLogits, logitRows, SETTINGS } from './device-sampler-cases.js';
import { chiSquareTest } from './helpers.js';

const draw = async (logits: Float32Array, B: number, V: number, rows: RowSampling[]): Promise<number[]> =>
  readTokens(sampleTokens(asLogits(logits, B, V), samplingTensors(rows)));

describe('device sampler (CPU kernel)', () => {
  // 700: rowMax's loop; 5,003 and 129,280 (DeepSeek-V3's vocabulary): core's SIMD pass
  for (const V of [700, 5_003, 129_280])
    it(`greedy rows are the host argmax (first maximum on ties), V = ${V}`, async () => {
      const B = 6;
      const l = logitRows(B, V, 1);
      l[3 * V + 10] = 50;
      l[3 * V + 400] = 50; // a tie: the first wins
      l[5 * V] = Number.NaN; // NaN never wins
      l[5 * V + V - 1] = 60; // the row's last value (each row is read at its own offset)
      l[4 * V + 7] = Number.POSITIVE_INFINITY;
      l[4 * V + 600] = Number.POSITIVE_INFINITY;
      const ids = await draw(
        l,
        B,
        V,
        Array.from({ length: B }, () => ({ temperature: 0 })),
      );
      expect(ids.slice(0, 5)).toEqual(Array.from({ length: 5 }, (_, b) => argmax(l.subarray(b * V, (b + 1) * V))));
      expect(ids[3]).toBe(10);
      expect(ids[4]).toBe(7);
      expect(ids[5]).toBe(V - 1);
    });

  for (const s of SETTINGS.filter((x) => x.temperature !== 0)) {
    it(`draws follow the host distribution: ${JSON.stringify(s)}`, async () => {
      const V = 13;
      const N = 6000;
      const row = logitRows(1, V, 7, 1.5);
      const logits = new Float32Array(N * V);
      for (let i = 0; i < N; i++) logits.set(row, i * V);
      const ids = await draw(
        logits,
        N,
        V,
        Array.from({ length: N }, (_, i) => ({ ...s, seed: 1234, counter: i })),
      );
      const counts = new Array<number>(V).fill(0);
      for (const t of ids) counts[t]!++;
      const probs = probabilities(row, s);
      if (probs.filter((x) => x > 0).length === 1) {
        // one token left (top-k 1): every draw is it
        expect(counts[probs.indexOf(1)]).toBe(N);
        return;
      }
      const { p, stat, df } = chiSquareTest(counts, probs);
      expect(p, `chi-square ${stat.toFixed(1)} on ${df} df; counts ${counts.join(' ')}`).toBeGreaterThan(1e-3);
    });
  }

  it('the same (seed, counter) draws the same id; other counters and seeds draw others', async () => {
    const V = 50;
    const l = logitRows(1, V, 3, 0.3); // nearly flat: draws spread over the vocabulary
    const rep = (seed: number, counter: number): RowSampling => ({ temperature: 1, seed, counter });
    const rows = [rep(5, 0), rep(5, 0), ...Array.from({ length: 30 }, (_, i) => rep(5, i + 1))];
    const B = rows.length;
    const all = new Float32Array(B * V);
    for (let b = 0; b < B; b++) all.set(l, b * V);
    const ids = await draw(all, B, V, rows);
    expect(ids[0]).toBe(ids[1]);
    expect(new Set(ids.slice(2)).size).toBeGreaterThan(10);
    expect(uniformOf(5, 0)).toBe(uniformOf(5, 0));
    expect(uniformOf(5, 0)).not.toBe(uniformOf(6, 0));
  });

  it('[B, 1, V] logits: the same ids as [B, V]; the reshaped view it samples is disposed, the logits are not', async () => {
    const [B, V] = [3, 300];
    const l = logitRows(B, V, 4);
    const flat = await draw(l, B, V, [{ temperature: 0 }, { temperature: 0 }, { temperature: 0 }]);
    const logits = tensor(l, { shape: [B, 1, V] });
    const ids = await readTokens(sampleTokens(logits, samplingTensors(Array(B).fill({ temperature: 0 }))));
    expect(ids).toEqual(flat);
    expect(logits.disposed).toBe(false);
    expect(logits.sharesStorage).toBe(false); // no view left on the storage: disposing the logits frees it
  });

  it('rejects bad settings and rows with nothing to sample', async () => {
    expect(() => samplingTensors([{ temperature: -1 }])).toThrow(/temperature/);
    expect(() => samplingTensors([{ topP: 0 }])).toThrow(/topP/);
    expect(() => samplingTensors([{ seed: -1 }])).toThrow(/seed must be an integer/);
    expect(() => samplingTensors([])).toThrow(/no rows/);
    const params = samplingTensors([{ temperature: 1 }, { temperature: 0 }]);
    expect(() => sampleTokens(asLogits(new Float32Array(9), 3, 3), params)).toThrow(/B = 3/);
    expect(() => sampleTokens(tensor(new Float64Array(6), { shape: [2, 3], dtype: 'f64' }), params)).toThrow(/f32/);
    const dead = Float32Array.from([-Infinity, -Infinity, -Infinity, 1, 2, 3]);
    await expect(readTokens(sampleTokens(asLogits(dead, 2, 3), params))).rejects.toThrow(/row 0 has no finite logit/);
  });
});
