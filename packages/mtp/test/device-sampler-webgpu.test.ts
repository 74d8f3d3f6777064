// The WGSL sampling kernel against the CPU kernel: the same logits, settings and (seed, counter) give
// the same ids (the same hash, the same f32 sums in the same order). Lavapipe in CI; skips without an
// adapter unless DSV3_REQUIRE_WEBGPU=1.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webGpuForTests, type WebGpuBackend } from '@dsv3/core/node';
import { readTokens, sampleTokens, samplingTensors, type RowSampling } from '../src/index.js';
import { asLogits, logitRows, SETTINGS } from './device-sampler-cases.js';

let gpu: WebGpuBackend | null = null;
beforeAll(async () => {
  gpu = await webGpuForTests('mtp');
}, 120_000);
afterAll(() => gpu?.dispose());

describe('device sampler: WebGPU == CPU', () => {
  for (const [V, B, scale] of [
    [37, 64, 1.5],
    [3001, 24, 3],
  ] as const) {
    it(`V=${V}, ${B} rows, every setting, one seed per row`, async (ctx) => {
      if (!gpu) return ctx.skip();
      const l = logitRows(B, V, V, scale);
      const rows: RowSampling[] = Array.from({ length: B }, (_, b) => ({
        ...SETTINGS[b % SETTINGS.length],
        seed: 77 + b,
        counter: b * 3,
      }));
      const cpuIds = await readTokens(sampleTokens(asLogits(l, B, V), samplingTensors(rows)));
      const before = gpu.readbacks;
      const ids = sampleTokens(asLogits(l, B, V, gpu), samplingTensors(rows, gpu));
      const gpuIds = await readTokens(ids);
      expect(gpu.readbacks - before).toBe(1);
      expect(gpuIds).toEqual(cpuIds);
    });
  }
});
