// The WGSL kernels against the CPU kernels (Dawn through the `webgpu` package; lavapipe in CI).
// Without a usable adapter the suite skips with a warning, unless DSV3_REQUIRE_WEBGPU=1.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webGpuForTests } from '@dsv3/core/node';
import { hasKernel, noGrad, tensor, toBackend, type Backend, type Tensor, type WebGpuBackend } from '@dsv3/core';
import {
  FLASH_PREFILL_OP,
  latentAttention,
  MLA,
  PAGED_ATTENTION_OP,
  pagedLatentAttention,
  PagedLatentCache,
  type MLAConfig,
} from '../src/index.js';
import { randArray, randomize, relErr } from './helpers.js';

let gpu: (Backend & { dispose(): void }) | null = null;

beforeAll(async () => {
  gpu = await webGpuForTests('mla');
}, 120_000);
afterAll(() => gpu?.dispose());

const on = (a: Float64Array, shape: number[], be?: Backend): Tensor => tensor(a, { shape, dtype: 'f32', backend: be });

describe('WGSL latent attention vs CPU (f32, ≤ 1e-5)', () => {
  it('kernels are registered for webgpu', () => {
    expect(hasKernel(FLASH_PREFILL_OP, 'webgpu')).toBe(true);
    expect(hasKernel(PAGED_ATTENTION_OP, 'webgpu')).toBe(true);
  });

  const cases: [string, number, number, number, number, number, number][] = [
    ['causal prefill B=2 S=T=19, H=3', 2, 19, 19, 3, 32, 8],
    ['chunk S=5 over T=70, 20 heads (two head groups)', 1, 5, 70, 20, 24, 8],
    ['V3-like decode: H=16, d_c 512, d_R 64, T=300', 2, 1, 300, 16, 512, 64],
  ];
  for (const [name, B, S, T, H, C, R] of cases) {
    it(`mla.flashPrefill: ${name}`, async (ctx) => {
      if (!gpu) return ctx.skip();
      const data = [
        randArray(B * S * H * C, 1, -2, 2),
        randArray(B * S * H * R, 2, -2, 2),
        randArray(B * T * C, 3),
        randArray(B * T * R, 4),
      ] as const;
      const shapes = [
        [B, S, H, C],
        [B, S, H, R],
        [B, T, C],
        [B, T, R],
      ];
      const scale = 1 / Math.sqrt(C);
      const ref = noGrad(() =>
        latentAttention(...(data.map((d, i) => on(d, shapes[i]!)) as [Tensor, Tensor, Tensor, Tensor]), {
          scale,
          impl: 'kernel',
        }),
      ).dataSync();
      const got = await noGrad(() =>
        latentAttention(...(data.map((d, i) => on(d, shapes[i]!, gpu!)) as [Tensor, Tensor, Tensor, Tensor]), {
          scale,
          impl: 'kernel',
        }),
      ).data();
      expect(relErr(got, ref)).toBeLessThan(1e-5);
    });
  }

  it('mla.pagedAttention over device pages: ragged sequences after appends, forks and truncation', async (ctx) => {
    if (!gpu) return ctx.skip();
    const [H, C, R] = [6, 40, 8];
    const opts = { numLayers: 2, kvLoraRank: C, ropeDim: R, numBlocks: 24, blockSize: 8 };
    // the same operations on pages on the CPU and on the GPU
    const caches = [new PagedLatentCache(opts), new PagedLatentCache({ ...opts, backend: gpu })] as const;
    const seqs = caches.map((c) => [c.allocate(), c.allocate(), c.allocate()])[0]!;
    let seed = 10;
    const grow = (s: number, n: number, layer = 1): void => {
      const ckv = randArray(n * C, seed++);
      const kr = randArray(n * R, seed++);
      for (const c of caches) c.append(layer, s, ckv, kr);
    };
    grow(seqs[0]!, 3);
    grow(seqs[1]!, 20);
    grow(seqs[2]!, 41);
    grow(seqs[2]!, 11, 0);
    const check = async (ids: number[], S: number): Promise<void> => {
      const N = ids.length;
      const ql = randArray(N * S * H * C, seed++, -2, 2);
      const qr = randArray(N * S * H * R, seed++, -2, 2);
      const [cc, gc] = caches;
      const ref = noGrad(() =>
        pagedLatentAttention(on(ql, [N, S, H, C]), on(qr, [N, S, H, R]), cc, 1, ids, { scale: 0.2 }),
      ).dataSync();
      for (const impl of ['kernel', 'composed'] as const) {
        const got = await noGrad(() =>
          pagedLatentAttention(on(ql, [N, S, H, C], gpu!), on(qr, [N, S, H, R], gpu!), gc, 1, ids, {
            scale: 0.2,
            impl,
          }),
        ).data();
        expect(relErr(got, ref), impl).toBeLessThan(1e-5);
      }
      // the exported rows are the CPU cache's, bit for bit
      for (const q of ids) {
        const want = cc.read(1, q);
        const got = await gc.readAsync(1, q);
        expect(Array.from(got.ckv)).toEqual(Array.from(want.ckv));
        expect(Array.from(got.kr)).toEqual(Array.from(want.kr));
      }
    };
    await check(seqs, 1);
    await check(seqs, 3);
    grow(seqs[0]!, 9); // new blocks and a partially filled one change
    const f = caches.map((c) => c.fork(seqs[2]!))[0]!;
    grow(f, 5); // copy-on-write of the shared last block (every layer's copy)
    grow(seqs[2]!, 2);
    for (const c of caches) c.truncate(seqs[1]!, 7);
    grow(seqs[1]!, 2);
    await check([seqs[0]!, seqs[1]!, seqs[2]!, f], 1);
    await check([f, seqs[0]!], 2);
    expect(Array.from((await caches[1].readAsync(0, f)).ckv)).toEqual(Array.from(caches[0].read(0, f).ckv));
    expect(() => caches[1].read(1, f)).toThrow(/readAsync/);
    for (const c of caches) c.dispose();
  });

  it('MLA on WebGPU: training form and absorbed form (with and without a paged cache) match the CPU', async (ctx) => {
    if (!gpu) return ctx.skip();
    const cfg: MLAConfig = {
      hiddenSize: 48,
      numHeads: 4,
      qLoraRank: 24,
      kvLoraRank: 32,
      qkNopeHeadDim: 16,
      qkRopeHeadDim: 8,
      vHeadDim: 12,
      rmsNormEps: 1e-6,
      ropeTheta: 10000,
      maxPositionEmbeddings: 256,
      ropeScaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 64, mscale: 1, mscaleAllDim: 1 },
    };
    const be = gpu as WebGpuBackend;
    const m = new MLA(cfg, { seed: 1 });
    randomize(m, 7);
    const mg = new MLA(cfg, { seed: 1, backend: gpu });
    const state: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(m.stateDict())) state[k] = await toBackend(v, gpu);
    mg.loadStateDict(state);
    const x = randArray(2 * 9 * cfg.hiddenSize, 3);
    const xc = on(x, [2, 9, cfg.hiddenSize]);
    const xg = on(x, [2, 9, cfg.hiddenSize], gpu);
    const ref = noGrad(() => m.forward(xc, { startPos: 60 })).dataSync();
    expect(relErr(await noGrad(() => mg.forward(xg, { startPos: 60 })).data(), ref)).toBeLessThan(1e-5);
    expect(relErr(await noGrad(() => mg.forwardAbsorbed(xg, { startPos: 60 })).data(), ref)).toBeLessThan(1e-5);
    // positions as a device tensor (ragged per row), never read back
    const pos = Int32Array.from([
      ...Array.from({ length: 9 }, (_, i) => 60 + i),
      ...Array.from({ length: 9 }, (_, i) => 3 * i),
    ]);
    const posRef = noGrad(() => m.forward(xc, { positions: pos })).dataSync();
    const before = be.readbacks;
    const yPos = noGrad(() =>
      mg.forward(xg, { positions: tensor(pos, { shape: [2, 9], dtype: 'i32', backend: gpu! }) }),
    );
    expect(be.readbacks).toBe(before);
    expect(relErr(await yPos.data(), posRef)).toBeLessThan(1e-5);
    // through a paged cache on the device: prefill 6, then decode 3 tokens, both rows together; the
    // forwards read nothing back
    const cache = new PagedLatentCache({
      numLayers: 1,
      kvLoraRank: 32,
      ropeDim: 8,
      numBlocks: 8,
      blockSize: 4,
      backend: gpu,
    });
    const ids = [cache.allocate(), cache.allocate()];
    const full = noGrad(() => m.forward(xc)).dataSync();
    const D = cfg.hiddenSize;
    let at = 0;
    for (const n of [6, 1, 1, 1]) {
      const reads = be.readbacks;
      const out = noGrad(() => mg.forwardAbsorbed(xg.narrow(1, at, n), { cache, seqIds: ids }));
      expect(be.readbacks).toBe(reads);
      const y = await out.data();
      for (let b = 0; b < 2; b++) {
        const want = full.subarray((b * 9 + at) * D, (b * 9 + at + n) * D);
        expect(relErr(y.subarray(b * n * D, (b + 1) * n * D), want)).toBeLessThan(1e-5);
      }
      at += n;
    }
    const cpuCache = new PagedLatentCache({ numLayers: 1, kvLoraRank: 32, ropeDim: 8, numBlocks: 8, blockSize: 4 });
    expect(() =>
      mg.forwardAbsorbed(xg.narrow(1, 0, 1), { cache: cpuCache, seqIds: [cpuCache.allocate(), cpuCache.allocate()] }),
    ).toThrow(/make the cache on the model's backend/);
    cache.dispose();
  });
});
