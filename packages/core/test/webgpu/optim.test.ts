// AdamW's fused WebGPU update (three element kernels a parameter) against the composed update the CPU
// runs, over several steps: f32 and bf16 moments, with and without weight decay, ragged shapes.
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../../src/index.js';
import { cpu, type Backend } from '../../src/index.js';
import { hasKernel } from '../../src/backend.js';
import { acquireGpu, relErr, rnd } from './gpu.js';

const gpu = await acquireGpu();
afterAll(() => gpu?.dispose());

const SHAPES = [[37, 13], [5], [3, 1025]];

async function run(be: Backend, stateDType: 'f32' | 'bf16', weightDecay: number) {
  const params = SHAPES.map(
    (s, k) => new T.Parameter(T.tensor(rnd(T.sizeOf(s), 10 + k), { shape: s, dtype: 'f32', backend: be })),
  );
  const opt = new T.AdamW(params, { lr: 3e-3, betas: [0.9, 0.95], eps: 1e-8, weightDecay, stateDType });
  for (let step = 0; step < 3; step++) {
    params.forEach((p, k) => {
      p.grad = T.tensor(rnd(p.value.size, 100 * step + k, -2, 2), { shape: p.shape, dtype: 'f32', backend: be });
    });
    opt.stepUpdate(step === 2 ? 1e-3 : undefined);
  }
  const out = [];
  for (const p of params) {
    const s = opt.moments(p)!;
    out.push({ w: await p.value.data(), m: await T.cast(s.m, 'f32').data(), v: await T.cast(s.v, 'f32').data() });
  }
  return out;
}

describe.skipIf(!gpu)('AdamW on WebGPU', () => {
  it('is fused (registered for webgpu, not for the CPU)', () => {
    expect(hasKernel(T.ADAMW_OP, 'webgpu')).toBe(true);
    expect(hasKernel(T.ADAMW_OP, 'cpu')).toBe(false);
  });

  for (const stateDType of ['f32', 'bf16'] as const) {
    for (const wd of [0, 0.1]) {
      it(`matches the CPU's composed update over 3 steps (${stateDType} moments, weight decay ${wd})`, async () => {
        const c = await run(cpu, stateDType, wd);
        const g = await run(gpu!, stateDType, wd);
        c.forEach((x, k) => {
          expect(relErr(g[k]!.w, x.w), `w ${k}`).toBeLessThanOrEqual(1e-6);
          expect(relErr(g[k]!.m, x.m), `m ${k}`).toBeLessThanOrEqual(1e-6);
          expect(relErr(g[k]!.v, x.v), `v ${k}`).toBeLessThanOrEqual(1e-6);
        });
      });
    }
  }
});
