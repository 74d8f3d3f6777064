// The H200 script's WebGPU half (bench/h200/gpu.ts) runs here in its small mode, so the first run on
// the device is not its first run at all: every check and measurement yields its JSON line, the FP8
// validation passes (through the emulated subgroup-matrix skeleton where the feature is missing), and
// the ratios pair measurements with anchors by name. Skips without an adapter unless DSV3_REQUIRE_WEBGPU=1.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webGpuForTests, type WebGpuBackend } from '@dsv3/core/node';
import { type Line, ratios, runH200, SMALL } from '../bench/h200/gpu.js';

let gpu: WebGpuBackend | null = null;
beforeAll(async () => {
  gpu = await webGpuForTests('train');
}, 120_000);
afterAll(() => gpu?.dispose());

describe('the H200 script in small mode', () => {
  it('validates, measures and reports every part as JSON lines', async (ctx) => {
    if (!gpu) return ctx.skip();
    const lines: Line[] = [];
    await runH200(gpu, SMALL, (l) => lines.push(JSON.parse(JSON.stringify(l)) as Line));
    expect(lines.filter((l) => l.kind === 'error')).toEqual([]);
    const fp8 = lines.find((l) => l.name === 'fp8-subgroup-matrix-vs-tiled')!;
    expect(fp8.pass).toBe(true);
    expect(lines.find((l) => l.name === 'f16-subgroup-matrix-vs-tiled')).toBeDefined();
    const measured = lines.filter((l) => l.kind === 'measure');
    const want = ['gemm-f32', 'fp8-gemm', ...SMALL.decodeBatches.map((b) => `decode-b${b}`), 'train-step'];
    // the f16 compute mode's decode, where the adapter has shader-f16 (lavapipe does)
    if (gpu.features.shaderF16) want.push(...SMALL.decodeBatches.map((b) => `decode-f16-b${b}`));
    for (const name of want) {
      const m = measured.find((l) => l.name === name);
      expect(m, name).toBeDefined();
      expect(Number.isFinite(m!.value) && (m!.value as number) > 0, name).toBe(true);
    }
    expect(Number.isFinite(measured.find((l) => l.name === 'train-step')!.loss)).toBe(true);
  }, 600_000);

  it('pairs each measurement with its anchor; the issue floors apply only to CUDA anchors', () => {
    const dsv3: Line[] = [
      { kind: 'measure', name: 'gemm-f32', value: 30, unit: 'TFLOP/s' },
      { kind: 'measure', name: 'decode-b1', value: 50, unit: 'tokens/s' },
      { kind: 'measure', name: 'decode-f16-b1', anchor: 'decode-b1', value: 80, unit: 'tokens/s' },
      { kind: 'measure', name: 'train-step', value: 10, unit: 'tokens/s' },
    ];
    const anchors: Line[] = [
      { kind: 'anchor', device: 'cuda', name: 'gemm-f32', what: 'cuBLAS fp32', value: 50 },
      { kind: 'anchor', device: 'cpu', name: 'decode-b1', what: 'HF', value: 100 },
    ];
    const r = ratios(dsv3, anchors);
    expect(r.map((l) => [l.name, l.ratio, l.meetsTarget])).toEqual([
      ['gemm-f32', 0.6, false],
      ['decode-b1', 0.5, undefined],
      ['decode-f16-b1', 0.8, undefined],
    ]);
  });
});
