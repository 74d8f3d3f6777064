// The WGSL verification kernel against the CPU kernel (the same logits, drafts, settings and counters
// give the same verdicts), and stochastic speculative decoding on WebGPU: the same tokens as on the CPU
// and, per step, read-backs of token ids only (one per sampled or greedy draft, one for the verdict).
// Lavapipe in CI; skips without an adapter unless DSV3_REQUIRE_WEBGPU=1.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tensor, type Backend } from '@dsv3/core';
import { webGpuForTests, type WebGpuBackend } from '@dsv3/core/node';
import {
  readTokens,
  readVerdicts,
  sampleTokens,
  samplingTensors,
  SpeculativeDecoder,
  verifyDrafts,
  type SamplingOptions,
  type VerifyRow,
} from '../src/index.js';
import { logitRows } from './device-sampler-cases.js';
import { MarkovModel } from './markov.js';

let gpu: WebGpuBackend | null = null;
beforeAll(async () => {
  gpu = await webGpuForTests('mtp');
}, 120_000);
afterAll(() => gpu?.dispose());

const TARGETS: SamplingOptions[] = [
  { temperature: 1 },
  { temperature: 0.7, topK: 5 },
  { temperature: 1.3, topP: 0.8 },
  { temperature: 0.9, topK: 8, topP: 0.6 },
];
const DRAFTS: ('greedy' | SamplingOptions)[] = [{ temperature: 1 }, { temperature: 0.6, topK: 4 }, 'greedy'];

describe('device verification: WebGPU == CPU', () => {
  for (const [V, B, K] of [
    [37, 24, 2],
    [1001, 12, 3],
  ] as const) {
    it(`V=${V}, ${B} sequences of ${K} drafts, sampled and greedy drafts, every target setting`, async (ctx) => {
      if (!gpu) return ctx.skip();
      // scale 1: drafts near the target, so both outcomes occur at every position
      const target = logitRows(B * (K + 1), V, 3 * V, 1);
      const q = Float32Array.from(
        logitRows(B * K, V, 5 * V, 1),
        (x, i) => x + target[i + Math.floor(i / (K * V)) * V]!,
      );
      for (const draft of DRAFTS) {
        const rows: VerifyRow[] = Array.from({ length: B }, (_, b) => ({
          target: TARGETS[b % TARGETS.length]!,
          draft,
          seed: 11 + b,
          counter: 100 * b,
        }));
        const drafts =
          draft === 'greedy'
            ? Array.from({ length: B }, (_, b) => Array.from({ length: K }, (_, j) => (b * 7 + j * 3) % V))
            : await sampled(q, B, K, V, draft);
        const run = async (be?: Backend): Promise<{ accepted: number; next: number }[]> => {
          const t = tensor(target, { shape: [B, K + 1, V], dtype: 'f32', backend: be });
          const d = draft === 'greedy' ? null : tensor(q, { shape: [B, K, V], dtype: 'f32', backend: be });
          return readVerdicts(verifyDrafts(t, d, drafts, rows));
        };
        const cpu = await run();
        const before = gpu.readbacks;
        expect(await run(gpu), JSON.stringify(draft)).toEqual(cpu);
        expect(gpu.readbacks - before).toBe(1);
        const accepted = cpu.map((v) => v.accepted);
        expect(Math.min(...accepted)).toBeLessThan(K);
        if (draft !== 'greedy') expect(Math.max(...accepted)).toBeGreaterThan(0);
      }
    });
  }

  it('a target row without finite logits gives -1 (an error on reading), as on the CPU', async (ctx) => {
    if (!gpu) return ctx.skip();
    const nan = tensor(new Float32Array(2 * 40).fill(Number.NaN), { shape: [1, 2, 40], dtype: 'f32', backend: gpu });
    const rows = [{ target: { temperature: 1 }, draft: 'greedy' as const, seed: 1, counter: 0 }];
    await expect(readVerdicts(verifyDrafts(nan, null, [[3]], rows))).rejects.toThrow(/no finite logit/);
  });
});

/** K drafts per sequence drawn on the CPU from the q rows (each draft with a counter of its own). */
async function sampled(q: Float32Array, B: number, K: number, V: number, s: SamplingOptions): Promise<number[][]> {
  const rows = Array.from({ length: B * K }, (_, i) => ({ ...s, seed: 3, counter: i }));
  const ids = await readTokens(sampleTokens(tensor(q, { shape: [B * K, V], dtype: 'f32' }), samplingTensors(rows)));
  return Array.from({ length: B }, (_, b) => ids.slice(b * K, (b + 1) * K));
}

describe('stochastic speculative decoding on WebGPU', () => {
  for (const draftSampling of [undefined, 'greedy'] as const) {
    it(`reads back token ids only, and emits the CPU's tokens (${draftSampling ?? 'sampled'} drafts, K = 2)`, async (ctx) => {
      if (!gpu) return ctx.skip();
      const opts = { draftTokens: 2, sampling: { temperature: 0.9, topK: 6 }, draftSampling, seed: 21 };
      const decode = async (model: MarkovModel, onStep: (readbacks: number) => void): Promise<number[]> => {
        const dec = new SpeculativeDecoder(model, model.newSequence(), opts);
        await dec.prefill([3, 5]);
        while (dec.tokens.length < 30) {
          const before = gpu!.readbacks;
          await dec.step();
          onStep(gpu!.readbacks - before);
        }
        return dec.tokens;
      };
      const onCpu = await decode(new MarkovModel(10, 2, 99), () => undefined);
      const perStep: number[] = [];
      const onGpu = await decode(new MarkovModel(10, 2, 99, gpu), (n) => perStep.push(n));
      expect(onGpu).toEqual(onCpu);
      // K draft ids + the verdict; never a logits row
      expect(new Set(perStep)).toEqual(new Set([3]));
    });
  }
});
