// A ragged batch (prefill chunks of several lengths next to decodes) equals each segment run alone.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { noGradAsync, tensor } from '@dsv3/core';
import { relativeError } from '@dsv3/core/testing';
import { loadModel, raggedMtpStep, raggedStep } from '../src/index.js';

const model = loadModel(join(import.meta.dirname, '../../core/test/fixtures/tiny-v3'));
const V = model.config.vocabSize;
const prompts = [[5, 9, 200, 31, 7], [44, 3], [900, 12, 13, 14, 15, 16, 17], [8]];

describe('raggedStep', () => {
  it('equals per-sequence model.step for mixed prefill chunks and decodes', async () => {
    await noGradAsync(async () => {
      const a = model.newCache(256, { blockSize: 4 });
      const b = model.newCache(256, { blockSize: 4 });
      const sa = prompts.map(() => a.allocate());
      const sb = prompts.map(() => b.allocate());
      // reference: each prompt alone, then one decode token each
      const want: Float32Array[] = [];
      for (const [i, p] of prompts.entries()) {
        model.step(
          a,
          [sa[i]!],
          tensor(Int32Array.from(p.slice(0, 3)), { shape: [1, Math.min(3, p.length)], dtype: 'i32' }),
        );
        if (p.length > 3)
          model.step(a, [sa[i]!], tensor(Int32Array.from(p.slice(3)), { shape: [1, p.length - 3], dtype: 'i32' }));
        const r = model.step(a, [sa[i]!], tensor(Int32Array.from([77]), { shape: [1, 1], dtype: 'i32' }));
        want.push((await r.logits.data()) as Float32Array);
      }
      // ragged: first chunks together, then the rest next to decodes, then decodes
      await raggedStep(
        model,
        b,
        prompts.map((p, i) => ({ seq: sb[i]!, tokens: p.slice(0, 3) })),
      );
      const mixed = prompts.map((p, i) => ({ seq: sb[i]!, tokens: p.length > 3 ? p.slice(3) : [77] }));
      await raggedStep(model, b, mixed);
      const last = prompts
        .map((p, i) => (p.length > 3 ? { seq: sb[i]!, tokens: [77] } : null))
        .filter((s) => s !== null);
      const out = await raggedStep(model, b, last);
      const got = (await out.logits.data()) as Float32Array;
      let k = 0;
      for (const [i, p] of prompts.entries()) {
        if (p.length <= 3) continue;
        expect(relativeError(got.subarray(k * V, (k + 1) * V), want[i]!)).toBeLessThan(1e-5);
        k++;
      }
      for (const [i, q] of sb.entries()) expect(b.length(q, 0)).toBe(a.length(sa[i]!, 0));
    });
  });

  it('returns every row with logits: all, and drafts through the MTP module', async () => {
    await noGradAsync(async () => {
      const c = model.newCache(128, { blockSize: 4 });
      const s = [c.allocate(), c.allocate()];
      const out = await raggedStep(
        model,
        c,
        [
          { seq: s[0]!, tokens: [1, 2, 3] },
          { seq: s[1]!, tokens: [4, 5] },
        ],
        { logits: 'all' },
      );
      expect(out.logits.shape).toEqual([5, V]);
      expect(out.offsets).toEqual([0, 3]);
      const d = await raggedMtpStep(model, c, 0, out.hidden, [
        { seq: s[0]!, tokens: [2, 3, 9] },
        { seq: s[1]!, tokens: [5, 9] },
      ]);
      expect(d.logits.shape).toEqual([5, V]);
      expect(c.length(s[0]!, model.config.numHiddenLayers)).toBe(3);
    });
  });

  it('rejects bad segments with a clear message', async () => {
    const c = model.newCache(64);
    const q = c.allocate();
    await expect(raggedStep(model, c, [])).rejects.toThrow(/no segments/);
    await expect(raggedStep(model, c, [{ seq: q, tokens: [] }])).rejects.toThrow(/no tokens/);
    await expect(raggedStep(model, c, [{ seq: q, tokens: [V] }])).rejects.toThrow(/outside the vocabulary/);
    await expect(
      raggedStep(model, c, [
        { seq: q, tokens: [1] },
        { seq: q, tokens: [2] },
      ]),
    ).rejects.toThrow(/twice/);
  });
});

describe('raggedStep logit rows', () => {
  it("returns each segment's trailing logitRows rows, equal to those of logits: all", async () => {
    await noGradAsync(async () => {
      const segs = (c: ReturnType<typeof model.newCache>) => [
        { seq: c.allocate(), tokens: [3, 4, 5, 6], logitRows: 2 },
        { seq: c.allocate(), tokens: [7, 8] },
      ];
      const a = model.newCache(64, { blockSize: 4 });
      const b = model.newCache(64, { blockSize: 4 });
      const all = (await (await raggedStep(model, a, segs(a), { logits: 'all' })).logits.data()) as Float32Array;
      const some = (await (await raggedStep(model, b, segs(b))).logits.data()) as Float32Array;
      const want = [2, 3, 5].flatMap((r) => Array.from(all.subarray(r * V, (r + 1) * V)));
      expect(relativeError(some, want)).toBeLessThan(1e-6);
      const c = model.newCache(64);
      await expect(raggedStep(model, c, [{ seq: c.allocate(), tokens: [1], logitRows: 2 }])).rejects.toThrow(
        /logit rows/,
      );
    });
  });
});
