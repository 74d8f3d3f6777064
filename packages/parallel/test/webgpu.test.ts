// Collectives on WebGPU tensors: staged through host memory, results land on the same backend.
import { cpu, decodeBf16, encodeBf16, fromRaw, Rng, type Backend, type Tensor } from '@dsv3/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webGpuForTests } from '@dsv3/core/node';
import { twoRanks } from './helpers/two-ranks.js';

let gpu: (Backend & { dispose?(): void }) | null = null;

beforeAll(async () => {
  gpu = await webGpuForTests('@dsv3/parallel');
}, 120_000);
afterAll(() => gpu?.dispose?.());

const values = (n: number, seed: number) => {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => r.uniform() * 2 - 1);
};

describe('collectives on WebGPU tensors', () => {
  it('allReduce (f32, bf16) and allToAll return tensors on the GPU backend with the right values', {
    timeout: 120_000,
  }, async (ctx) => {
    if (!gpu) return ctx.skip();
    const [p0, p1] = await twoRanks();
    const n = 3000;
    const onGpu = (dtype: 'f32' | 'bf16', v: Float32Array): Tensor =>
      fromRaw(dtype, [n], dtype === 'bf16' ? encodeBf16(v) : v, gpu!);
    const [a, b] = await Promise.all([
      p0.allReduce(onGpu('f32', values(n, 1))).wait(),
      p1.allReduce(onGpu('f32', values(n, 2))).wait(),
    ]);
    const want = values(n, 1).map((x, i) => Math.fround(x + values(n, 2)[i]!));
    for (const t of [a, b]) {
      expect(t.backend).toBe(gpu);
      expect(Array.from(await t.data())).toEqual(Array.from(want));
    }
    const [c] = await Promise.all([
      p0.allReduce(onGpu('bf16', values(n, 3))).wait(),
      p1.allReduce(onGpu('bf16', values(n, 4))).wait(),
    ]);
    const wantBf = encodeBf16(
      decodeBf16(encodeBf16(values(n, 3))).map((x, i) => x + decodeBf16(encodeBf16(values(n, 4)))[i]!),
    );
    expect(c.backend).toBe(gpu);
    expect(c.dtype).toBe('bf16');
    expect(Array.from(await c.raw())).toEqual(Array.from(wantBf));
    const rows = fromRaw(
      'f32',
      [4, 2],
      Float32Array.from({ length: 8 }, (_, i) => i),
      gpu,
    );
    const [d0, d1] = await Promise.all([
      p0.allToAll(rows, [1, 3]).wait(),
      p1.allToAll(fromRaw('f32', [2, 2], Float32Array.of(10, 11, 12, 13), cpu), [2, 0]).wait(),
    ]);
    expect(d0.output.backend).toBe(gpu);
    expect(d0.outputSplits).toEqual([1, 2]);
    expect(Array.from(await d0.output.data())).toEqual([0, 1, 10, 11, 12, 13]);
    expect(Array.from(await d1.output.data())).toEqual([2, 3, 4, 5, 6, 7]);
    await Promise.all([p0.destroy(), p1.destroy()]);
  });
});
