import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { contiguousPlacement, eplbPlacement, chooseReplica, launchLocal } from '../src/index.js';

const script = fileURLToPath(new URL('./ranks/ep-moe.ts', import.meta.url));

describe('expert placement', () => {
  it('contiguous blocks, and EPLB replicas of hot experts spread over ranks', () => {
    const c = contiguousPlacement(8, 4);
    expect(c.physRank).toEqual([0, 0, 1, 1, 2, 2, 3, 3]);
    expect(() => contiguousPlacement(8, 3)).toThrow(/3 EP ranks must divide the 8 routed experts/);
    const e = eplbPlacement([9, 1, 1, 5, 1, 1, 7, 2], 4, { redundant: 4 });
    expect(e.physToLogical).toHaveLength(12);
    expect(e.replicas[0]!.length).toBeGreaterThan(1);
    const used = new Set([0, 1, 2, 3].map((t) => chooseReplica(e, 0, t, 0)));
    expect(used.size).toBe(e.replicas[0]!.length);
    expect(() => eplbPlacement([1, 2, 3, 4], 4, { redundant: 3 })).toThrow(/multiple of the 4 EP ranks/);
  });
});

describe('expert-parallel MoE on 4 local ranks (2 nodes of 2)', () => {
  it('equals the single-process layer; dispatch∘combine is the identity; node limit holds; FP8/BF16 wire', { timeout: 300_000 }, async () => {
    const log = new PassThrough();
    let text = '';
    log.on('data', (d) => (text += d));
    const res = await launchLocal({ nproc: 4, script, timeoutMs: 280_000, stdout: log, stderr: log });
    for (const r of res) {
      expect(r.error, `rank ${r.rank}: ${r.error?.stack}\n${text}`).toBeUndefined();
      const o = r.result as Record<string, number>;
      // Exact transport; bf16 and fp8 payloads are exactly the codec's rounding.
      expect(o['roundTrip.native']).toBe(0);
      expect(o['roundTrip.bf16']).toBe(0);
      expect(o['roundTrip.fp8']).toBe(0);
      // f64: only the order of the k-way combine sum and the cross-rank gradient sum differ.
      for (const name of ['contiguous', 'eplb', 'noOverlap']) {
        expect(o[`${name}.output`], name).toBeLessThan(1e-13);
        expect(o[`${name}.inputGrad`], name).toBeLessThan(1e-13);
        expect(o[`${name}.paramGrads`], name).toBeLessThan(1e-12);
      }
      expect(o['nodes.M1']).toBe(1);
      expect(o['nodes.M2']).toBe(2);
      // f32 layer: FP8 dispatch is exactly the quantized input; BF16 combine adds at most bf16 rounding.
      expect(o['fp8.native']).toBeLessThan(1e-6);
      expect(o['fp8.bf16']).toBeLessThan(2 ** -8);
      expect(o['fp8.bf16']).toBeGreaterThan(0);
    }
  });
});
