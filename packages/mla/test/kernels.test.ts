// The attention kernels (tiled online softmax, contiguous and paged) against a float64 reference in
// plain loops, on random inputs with ragged lengths; the composed path against the same reference.
import { describe, expect, it } from 'vitest';
import { hasKernel, noGrad, tensor } from '@dsv3/core';
import {
  FLASH_PREFILL_OP,
  latentAttention,
  PAGED_ATTENTION_OP,
  pagedLatentAttention,
  PagedLatentCache,
} from '../src/index.js';
import { randArray, refLatentAttention, relErr } from './helpers.js';

describe('mla.flashPrefill (contiguous latents)', () => {
  it('is registered for cpu', () => {
    expect(hasKernel(FLASH_PREFILL_OP, 'cpu')).toBe(true);
    expect(hasKernel(PAGED_ATTENTION_OP, 'cpu')).toBe(true);
  });

  const cases: [string, number, number, number, number, number, number, number][] = [
    // name, B, S, T, H, C, R, q amplitude (peaky softmax exercises the running-max rescale)
    ['square causal, B=2 S=T=37', 2, 37, 37, 3, 40, 6, 1],
    ['chunk: S=9 queries over T=150 keys, several key tiles', 1, 9, 150, 4, 24, 8, 3],
    ['long prefill: S=T=203, multiple query and key tiles', 1, 203, 203, 2, 16, 4, 4],
    ['single query (decode shape)', 3, 1, 65, 16, 32, 8, 2],
  ];
  for (const [name, B, S, T, H, C, R, amp] of cases) {
    for (const dtype of ['f64', 'f32'] as const) {
      it(`${name} (${dtype})`, () => {
        const ql = randArray(B * S * H * C, 1, -amp, amp);
        const qr = randArray(B * S * H * R, 2, -amp, amp);
        const kv = randArray(B * T * C, 3);
        const kr = randArray(B * T * R, 4);
        const scale = 1 / Math.sqrt(C / 2);
        const ref = refLatentAttention({
          qL: ql,
          qR: qr,
          ckv: Array.from({ length: B }, (_, b) => kv.subarray(b * T * C, (b + 1) * T * C)),
          kr: Array.from({ length: B }, (_, b) => kr.subarray(b * T * R, (b + 1) * T * R)),
          B,
          S,
          H,
          C,
          R,
          scale,
          offsets: new Array<number>(B).fill(T - S),
        });
        const args = [
          tensor(ql, { shape: [B, S, H, C], dtype }),
          tensor(qr, { shape: [B, S, H, R], dtype }),
          tensor(kv, { shape: [B, T, C], dtype }),
          tensor(kr, { shape: [B, T, R], dtype }),
        ] as const;
        const tol = dtype === 'f64' ? 1e-12 : 1e-6;
        for (const impl of ['kernel', 'composed'] as const) {
          const got = noGrad(() => latentAttention(...args, { scale, impl }).dataSync());
          const e = relErr(got, ref);
          expect(e, `${impl}: ${e}`).toBeLessThan(tol);
        }
      });
    }
  }
});

describe('mla.pagedAttention (latents in a paged cache, ragged lengths)', () => {
  for (const dtype of ['f64', 'f32'] as const) {
    for (const S of [1, 4]) {
      it(`S=${S} queries per sequence, lengths 5/17/70, block 16, interleaved allocation (${dtype})`, () => {
        const [H, C, R] = [5, 24, 6];
        const lens = [5, 17, 70];
        const cache = new PagedLatentCache({
          numLayers: 2,
          kvLoraRank: C,
          ropeDim: R,
          numBlocks: 16,
          blockSize: 16,
          dtype,
        });
        const seqs = lens.map(() => cache.allocate());
        const kvs = lens.map((T, i) => randArray(T * C, 10 + i));
        const krs = lens.map((T, i) => randArray(T * R, 20 + i));
        // append in round-robin chunks of 3 so the sequences' blocks interleave in the pool
        const at = lens.map(() => 0);
        while (at.some((a, i) => a < lens[i]!)) {
          lens.forEach((T, i) => {
            const n = Math.min(3, T - at[i]!);
            if (n <= 0) return;
            cache.append(
              1,
              seqs[i]!,
              kvs[i]!.subarray(at[i]! * C, (at[i]! + n) * C),
              krs[i]!.subarray(at[i]! * R, (at[i]! + n) * R),
            );
            at[i]! += n;
          });
        }
        expect(new Set(cache.blockTable(seqs[2]!)).size).toBe(5);
        const N = lens.length;
        const ql = randArray(N * S * H * C, 30, -2, 2);
        const qr = randArray(N * S * H * R, 31, -2, 2);
        const scale = 0.3;
        const ref = refLatentAttention({
          qL: ql,
          qR: qr,
          ckv: kvs,
          kr: krs,
          B: N,
          S,
          H,
          C,
          R,
          scale,
          offsets: lens.map((T) => T - S),
        });
        const q1 = tensor(ql, { shape: [N, S, H, C], dtype });
        const q2 = tensor(qr, { shape: [N, S, H, R], dtype });
        const tol = dtype === 'f64' ? 1e-12 : 1e-6;
        for (const impl of ['kernel', 'composed'] as const) {
          const got = noGrad(() => pagedLatentAttention(q1, q2, cache, 1, seqs, { scale, impl }).dataSync());
          const e = relErr(got, ref);
          expect(e, `${impl}: ${e}`).toBeLessThan(tol);
        }
      });
    }
  }

  it('rejects queries longer than the cached sequence and width mismatches', () => {
    const cache = new PagedLatentCache({ numLayers: 1, kvLoraRank: 8, ropeDim: 2, numBlocks: 2, blockSize: 4 });
    const s = cache.allocate();
    cache.append(0, s, randArray(16, 1), randArray(4, 2));
    const q = (S: number, C: number) =>
      [
        tensor(randArray(S * C, 3), { shape: [1, S, 1, C] }),
        tensor(randArray(S * 2, 4), { shape: [1, S, 1, 2] }),
      ] as const;
    expect(() => pagedLatentAttention(...q(3, 8), cache, 0, [s], { scale: 1 })).toThrow(/fewer than the 3 queries/);
    expect(() => pagedLatentAttention(...q(1, 6), cache, 0, [s], { scale: 1 })).toThrow(/kvLoraRank 8/);
    expect(() => pagedLatentAttention(...q(1, 8), cache, 0, [s, s], { scale: 1 })).toThrow(
      /1 query rows but 2 sequence ids/,
    );
  });
});
