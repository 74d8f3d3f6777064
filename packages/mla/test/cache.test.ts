// PagedLatentCache: chunked prefill + decode through the cache equals one full causal pass; ragged
// batches; fork (shared prefix, copy-on-write), truncate (speculative rollback), free, accounting.
import { describe, expect, it } from 'vitest';
import { expectSameBits } from '@dsv3/core/testing';
import {
  concat,
  cpu,
  type CpuStorage,
  gemmInfo,
  isResident,
  noGrad,
  setResidentOutputBudget,
  type Tensor,
} from '@dsv3/core';
import { absorbedCpuWeights, absorbQueryCpu } from '../src/absorbed-cpu.js';
import { RESIDENT_MIN_FLOATS } from '../src/attention-cpu.js';
import { kvElementsPerToken, MLA, mlaConfigFromHf, PagedLatentCache, type MLAConfig } from '../src/index.js';
import { randArray, randomize, randT, relErr } from './helpers.js';

const cfg: MLAConfig = {
  hiddenSize: 40,
  numHeads: 4,
  qLoraRank: 20,
  kvLoraRank: 24,
  qkNopeHeadDim: 12,
  qkRopeHeadDim: 8,
  vHeadDim: 10,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  maxPositionEmbeddings: 128,
  ropeScaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 16, mscale: 1, mscaleAllDim: 1 },
};
const D = cfg.hiddenSize;

function layers(n: number): MLA[] {
  return Array.from({ length: n }, (_, i) => {
    const m = new MLA(cfg, { seed: i });
    randomize(m, 1000 * (i + 1));
    return m;
  });
}

const newCache = (numLayers: number, numBlocks: number, blockSize = 4): PagedLatentCache =>
  new PagedLatentCache({ numLayers, kvLoraRank: cfg.kvLoraRank, ropeDim: cfg.qkRopeHeadDim, numBlocks, blockSize });

/** Stacked MLA layers with residuals, training form over whole sequences: [B, S, D]. */
function fullPass(ms: MLA[], x: Tensor): Float32Array {
  return noGrad(() => {
    let h = x;
    for (const m of ms) h = h.add(m.forward(h));
    return h.dataSync() as Float32Array;
  });
}

/** One step of the same stack through the cache (absorbed form): x [B, n, D] → [B, n, D]. */
function step(ms: MLA[], x: Tensor, cache: PagedLatentCache, seqIds: number[]): Float32Array {
  return noGrad(() => {
    let h = x;
    ms.forEach((m, l) => (h = h.add(m.forwardAbsorbed(h, { cache, layer: l, seqIds }))));
    return h.dataSync() as Float32Array;
  });
}

/** Feeds x[:, from:] in chunks; returns the outputs [B, Σchunks, D]. */
function cachedPass(
  ms: MLA[],
  x: Tensor,
  cache: PagedLatentCache,
  seqIds: number[],
  chunks: number[],
  from = 0,
): Float32Array {
  const B = x.shape[0]!;
  const S = chunks.reduce((a, b) => a + b, 0);
  const out = new Float32Array(B * S * D);
  let at = 0;
  for (const n of chunks) {
    const y = step(ms, x.narrow(1, from + at, n), cache, seqIds);
    for (let b = 0; b < B; b++) out.set(y.subarray(b * n * D, (b + 1) * n * D), (b * S + at) * D);
    at += n;
  }
  return out;
}

const tokens = (a: Float32Array, from: number, len: number): Float32Array => a.subarray(from * D, (from + len) * D);

describe('PagedLatentCache with MLA', () => {
  it('chunked prefill + token-by-token decode == one full causal pass (2 layers, batch 2)', () => {
    const ms = layers(2);
    const x = randT([2, 23, D], 5);
    const full = fullPass(ms, x);
    const cache = newCache(2, 12);
    const seqs = [cache.allocate(), cache.allocate()];
    const got = cachedPass(ms, x, cache, seqs, [7, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    const e = relErr(got, full);
    expect(e).toBeLessThan(1e-5);
    expect(cache.length(seqs[0]!)).toBe(23);
    expect(cache.length(seqs[1]!, 1)).toBe(23);
    expect(cache.blockTable(seqs[1]!).length).toBe(6);
    // the composed path through the cache agrees too
    const c2 = newCache(2, 12);
    const s2 = [c2.allocate(), c2.allocate()];
    const viaComposed = noGrad(() => {
      const y: Float32Array[] = [];
      for (const [at, n] of [
        [0, 20],
        [20, 3],
      ] as const) {
        let h = x.narrow(1, at, n);
        ms.forEach((m, l) => (h = h.add(m.forwardAbsorbed(h, { cache: c2, layer: l, seqIds: s2, impl: 'composed' }))));
        y.push(h.dataSync() as Float32Array);
      }
      return y;
    });
    expect(
      relErr(
        viaComposed[1]!,
        fullPass(ms, x).filter((_, i) => Math.floor(i / D) % 23 >= 20),
      ),
    ).toBeLessThan(1e-5);
  });

  it('ragged batch: sequences of different lengths decode in one call', () => {
    const ms = layers(1);
    const xa = randT([1, 12, D], 6);
    const xb = randT([1, 6, D], 7);
    const fa = fullPass(ms, xa);
    const fb = fullPass(ms, xb);
    const cache = newCache(1, 8);
    const a = cache.allocate();
    const b = cache.allocate();
    cachedPass(ms, xa, cache, [a], [9]);
    cachedPass(ms, xb, cache, [b], [3]);
    for (let t = 0; t < 3; t++) {
      const y = step(ms, concat([xa.narrow(1, 9 + t, 1), xb.narrow(1, 3 + t, 1)], 0), cache, [a, b]);
      expect(relErr(y.subarray(0, D), tokens(fa, 9 + t, 1))).toBeLessThan(1e-5);
      expect(relErr(y.subarray(D, 2 * D), tokens(fb, 3 + t, 1))).toBeLessThan(1e-5);
    }
    expect([cache.length(a), cache.length(b)]).toEqual([12, 6]);
  });

  it('fork shares the prefix blocks; writes copy shared blocks (copy-on-write)', () => {
    const ms = layers(2);
    const prefix = randT([1, 10, D], 8);
    const contA = randT([1, 5, D], 9);
    const contB = randT([1, 4, D], 10);
    const cache = newCache(2, 10);
    const p = cache.allocate();
    cachedPass(ms, prefix, cache, [p], [10]);
    expect(cache.usedBlocks).toBe(3); // 10 tokens in blocks of 4
    const before = cache.read(1, p);
    const q = cache.fork(p);
    expect(cache.blockTable(q)).toEqual(cache.blockTable(p));
    expect(cache.blockRefCount(cache.blockTable(p)[0]!)).toBe(2);
    expect(cache.usedBlocks).toBe(3);
    // the parent continues with A, the fork with B
    const ya = cachedPass(ms, contA, cache, [p], [2, 1, 1, 1]);
    const yb = cachedPass(ms, contB, cache, [q], [4]);
    expect(relErr(ya, tokens(fullPass(ms, concat([prefix, contA], 1)), 10, 5))).toBeLessThan(1e-5);
    expect(relErr(yb, tokens(fullPass(ms, concat([prefix, contB], 1)), 10, 4))).toBeLessThan(1e-5);
    // the full prefix blocks stay shared, the partial third block was copied by the first writer
    const tp = cache.blockTable(p);
    const tq = cache.blockTable(q);
    expect(tp.slice(0, 2)).toEqual(tq.slice(0, 2));
    expect(tp[2]).not.toBe(tq[2]);
    expect(cache.blockRefCount(tp[2]!)).toBe(1);
    expect(cache.blockRefCount(tq[2]!)).toBe(1);
    // the fork's writes never reached the parent's prefix
    const after = cache.read(1, p, 0, 10);
    expect(relErr(after.ckv, before.ckv)).toBe(0);
    expect(relErr(after.kr, before.kr)).toBe(0);
    cache.free(q);
    expect(cache.blockRefCount(tp[0]!)).toBe(1);
    expect(cache.usedBlocks).toBe(4); // p: 15 tokens
    cache.free(p);
    expect(cache.usedBlocks).toBe(0);
    expect(cache.freeBlocks).toBe(10);
  });

  it('truncate rolls back rejected draft tokens (speculative decoding)', () => {
    const ms = layers(2);
    const x = randT([1, 14, D], 11);
    const draft = randT([1, 6, D], 12);
    const cache = newCache(2, 8);
    const s = cache.allocate();
    cachedPass(ms, x, cache, [s], [10]);
    // verify 6 draft tokens at once, accept 1, roll back the other 5
    cachedPass(ms, draft, cache, [s], [6]);
    expect(cache.length(s)).toBe(16);
    expect(cache.usedBlocks).toBe(4);
    cache.truncate(s, 11);
    expect(cache.length(s)).toBe(11);
    expect(cache.length(s, 0)).toBe(11);
    expect(cache.usedBlocks).toBe(3);
    // continue with the real tokens 11..13: the rolled-back latents must not leak in
    const accepted = concat([x.narrow(1, 0, 10), draft.narrow(1, 0, 1), x.narrow(1, 11, 3)], 1);
    const y = cachedPass(ms, accepted, cache, [s], [1, 2], 11);
    expect(relErr(y, tokens(fullPass(ms, accepted), 11, 3))).toBeLessThan(1e-5);
    expect(() => cache.truncate(s, 15)).toThrow(/cannot truncate/);
    cache.truncate(s, 0);
    expect(cache.usedBlocks).toBe(0);
  });

  it("CPU inference: a prefill's queries and attention output live in the engine memory and go back once read", () => {
    // A prefill's (at least RESIDENT_MIN_FLOATS) absorbed queries are resident, a decode step's are not;
    // forwardAbsorbed disposes the queries and the attention's output as soon as they are read, so
    // repeated prefills hold no more engine memory.
    const ms = layers(2);
    const d = { H: cfg.numHeads, dn: cfg.qkNopeHeadDim, dv: cfg.vHeadDim, dc: cfg.kvLoraRank };
    const a = absorbedCpuWeights(ms[0]!.kvBProj.weight.value, d, null);
    const [B, S] = [8, 100]; // 8 x 100 x 4 heads x 24 = 76,800 floats of queries
    expect(B * S * d.H * d.dc).toBeGreaterThanOrEqual(RESIDENT_MIN_FLOATS);
    for (const [b, resident] of [
      [B, true],
      [1, false],
    ] as const) {
      const q = noGrad(() => absorbQueryCpu(randT([b, b === 1 ? 1 : S, d.H, d.dn], 5), a, d));
      expect(isResident((q.storage as CpuStorage).data), `${b} rows`).toBe(resident);
      q.dispose();
    }
    const cache = newCache(2, 2 * B * Math.ceil(S / 4));
    const prefill = (seed: number) => {
      const seqs = Array.from({ length: B }, () => cache.allocate());
      step(ms, randT([B, S, D], seed), cache, seqs);
      for (const q of seqs) cache.free(q);
    };
    // Kernel outputs taken from the free list live in engine memory too and go back only when collected:
    // kept on host here, so the count is MLA's own blocks.
    const outputBudget = setResidentOutputBudget(0);
    try {
      prefill(6);
      prefill(7);
      const held = gemmInfo().residentBytes;
      for (let i = 0; i < 3; i++) prefill(8 + i);
      expect(gemmInfo().residentBytes).toBe(held);
    } finally {
      setResidentOutputBudget(outputBudget);
    }
  });

  it("CPU inference: a prefill's queries and attention output are written whole (their blocks are not zero-filled)", () => {
    // Their engine blocks are taken without the zero fill: every element must be written. Freed blocks
    // of the same sizes filled with NaN come first in the engine's free list, so an element left
    // unwritten reads NaN (the queries' block is checked to be that one).
    const ms = layers(2);
    const d = { H: cfg.numHeads, dn: cfg.qkNopeHeadDim, dv: cfg.vHeadDim, dc: cfg.kvLoraRank };
    const a = absorbedCpuWeights(ms[0]!.kvBProj.weight.value, d, null);
    const [B, S] = [8, 100];
    const poisonBlocks = (floats: number): number => {
      const s = cpu.allocResident('f32', floats);
      (s.data as Float32Array).fill(Number.NaN);
      cpu.free(s);
      return (s.data as Float32Array).byteOffset;
    };
    const qIn = randT([B, S, d.H, d.dn], 5);
    const qRef = noGrad(() => absorbQueryCpu(qIn, a, d));
    const want = Float32Array.from(qRef.dataSync() as Float32Array);
    qRef.dispose();
    const at = poisonBlocks(B * S * d.H * d.dc);
    const q = noGrad(() => absorbQueryCpu(qIn, a, d));
    expect((q.storage as CpuStorage).data.byteOffset).toBe(at);
    expectSameBits(q.dataSync(), want, 'q');
    q.dispose();

    const x = randT([B, S, D], 6);
    const prefill = (): Float32Array => {
      const cache = newCache(2, 2 * B * Math.ceil(S / 4));
      return step(
        ms,
        x,
        cache,
        Array.from({ length: B }, () => cache.allocate()),
      );
    };
    const ref = prefill();
    poisonBlocks(B * S * d.H * d.dc); // q' and the attention's output [B, S, H, dc]
    const got = prefill();
    expect(got.every(Number.isFinite)).toBe(true);
    expectSameBits(got, ref, 'got');
  });

  it('out of blocks is an error that leaves the cache unchanged', () => {
    const cache = newCache(1, 2, 4);
    const s = cache.allocate();
    const rows = (n: number) => [randArray(n * cfg.kvLoraRank, 1), randArray(n * cfg.qkRopeHeadDim, 2)] as const;
    cache.append(0, s, ...rows(6));
    expect(() => cache.append(0, s, ...rows(3))).toThrow(
      /out of blocks: appending 3 tokens to sequence 0 needs 1 free blocks, 0 left/,
    );
    expect(cache.length(s)).toBe(6);
    cache.append(0, s, ...rows(2));
    expect(cache.length(s)).toBe(8);
    // copy-on-write needs a free block too
    const f = cache.fork(s);
    cache.truncate(f, 7);
    expect(() => cache.append(0, f, ...rows(1))).toThrow(/out of blocks/);
    // an MLA step that runs out of blocks mid-batch rolls back the rows it appended
    const [m] = layers(1);
    const c2 = newCache(1, 5, 4);
    const a = c2.allocate();
    const b = c2.allocate();
    cachedPass([m!], randT([1, 8, D], 3), c2, [a], [8]);
    noGrad(() => m!.forwardAbsorbed(randT([2, 1, D], 4), { cache: c2, seqIds: [a, b] }));
    expect(c2.usedBlocks).toBe(4);
    // b (first row) takes the last free block, then a (second row) runs out: b is rolled back
    expect(() => noGrad(() => m!.forwardAbsorbed(randT([2, 4, D], 4), { cache: c2, seqIds: [b, a] }))).toThrow(
      /out of blocks/,
    );
    expect([c2.length(a), c2.length(b)]).toEqual([9, 1]);
    expect(c2.usedBlocks).toBe(4);
  });

  it("f32 pages live in the GEMM engine's memory (the attention reads them in place), f64 ones on the host", () => {
    const before = gemmInfo().residentBytes;
    const cache = newCache(2, 5, 4);
    const pool = 2 * 5 * 4 * (cfg.kvLoraRank + cfg.qkRopeHeadDim) * 4;
    expect(gemmInfo().residentBytes - before).toBeGreaterThanOrEqual(pool);
    cache.dispose();
    expect(gemmInfo().residentBytes).toBe(before);
    const f64 = new PagedLatentCache({ numLayers: 2, kvLoraRank: 8, ropeDim: 4, numBlocks: 5, dtype: 'f64' });
    expect(gemmInfo().residentBytes).toBe(before);
    f64.dispose();
  });

  it('hands freed blocks out again in ascending order (a reused pool keeps a sequence in one run of rows)', () => {
    const cache = newCache(1, 8, 4);
    const rows = (n: number) => [randArray(n * cfg.kvLoraRank, 1), randArray(n * cfg.qkRopeHeadDim, 2)] as const;
    const a = cache.allocate();
    cache.append(0, a, ...rows(9));
    expect(cache.blockTable(a)).toEqual([0, 1, 2]);
    cache.free(a);
    const b = cache.allocate();
    cache.append(0, b, ...rows(12));
    expect(cache.blockTable(b)).toEqual([0, 1, 2]);
    cache.dispose();
  });

  it('read gathers across blocks; the f32 pool round-trips what was appended', () => {
    const cache = newCache(1, 6, 3);
    const s = cache.allocate();
    const other = cache.allocate();
    const kv = Float32Array.from(randArray(11 * cfg.kvLoraRank, 1));
    const kr = Float32Array.from(randArray(11 * cfg.qkRopeHeadDim, 2));
    cache.append(0, s, kv.subarray(0, 4 * cfg.kvLoraRank), kr.subarray(0, 4 * cfg.qkRopeHeadDim));
    cache.append(0, other, randArray(2 * cfg.kvLoraRank, 3), randArray(2 * cfg.qkRopeHeadDim, 4));
    cache.append(0, s, kv.subarray(4 * cfg.kvLoraRank), kr.subarray(4 * cfg.qkRopeHeadDim));
    const r = cache.read(0, s);
    expect(r.length).toBe(11);
    expect(Array.from(r.ckv)).toEqual(Array.from(kv));
    expect(Array.from(r.kr)).toEqual(Array.from(kr));
    expect(Array.from(cache.read(0, s, 5, 7).ckv)).toEqual(
      Array.from(kv.subarray(5 * cfg.kvLoraRank, 7 * cfg.kvLoraRank)),
    );
  });
});

describe('cache accounting', () => {
  it('V3: 576 x 61 = 35,136 elements per token, 70,272 bytes in BF16', () => {
    const v3 = mlaConfigFromHf({
      hidden_size: 7168,
      num_attention_heads: 128,
      q_lora_rank: 1536,
      kv_lora_rank: 512,
      qk_nope_head_dim: 128,
      qk_rope_head_dim: 64,
      v_head_dim: 128,
      max_position_embeddings: 163840,
      rope_theta: 10000,
    });
    const cache = new PagedLatentCache({
      numLayers: 61,
      kvLoraRank: v3.kvLoraRank,
      ropeDim: v3.qkRopeHeadDim,
      numBlocks: 1,
      blockSize: 1,
    });
    expect(cache.elementsPerToken).toBe(35136);
    expect(cache.bytesPerToken('bf16')).toBe(70272);
    expect(cache.bytesPerToken()).toBe(35136 * 4);
    expect(kvElementsPerToken({ kind: 'mla', numLayers: 61, kvLoraRank: 512, ropeDim: 64 })).toBe(35136);
  });

  it('V2 Table 1 formulas (V2: 60 layers, 128 heads, d_h 128, d_c 512, d_R 64)', () => {
    expect(kvElementsPerToken({ kind: 'mla', numLayers: 60, kvLoraRank: 512, ropeDim: 64 })).toBe(34560);
    expect(kvElementsPerToken({ kind: 'mha', numLayers: 60, numHeads: 128, headDim: 128 })).toBe(1966080);
    expect(kvElementsPerToken({ kind: 'gqa', numLayers: 60, numHeads: 128, numGroups: 8, headDim: 128 })).toBe(122880);
    expect(kvElementsPerToken({ kind: 'mqa', numLayers: 60, headDim: 128 })).toBe(15360);
    // MLA's (d_c + d_R) = 4.5 d_h: like GQA with 2.25 groups
    expect(kvElementsPerToken({ kind: 'mla', numLayers: 1, kvLoraRank: 512, ropeDim: 64 }) / (2 * 128)).toBe(2.25);
  });
});
