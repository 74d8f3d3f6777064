// THE proof of the parallel training step: the tiny preset trained for several steps on a layout equals
// the same steps on one process. In f64 the only differences are the order of sums (gradients over
// ranks and micro-batches, the k-way expert combine, the all-reduce tree), ~1e-16 per operation; after
// three AdamW steps the parameters agree to 1e-10 relative and the losses to 1e-11.
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { relativeError } from '@dsv3/core/testing';
import { launchLocal } from '@dsv3/parallel';
import { beforeAll, describe, expect, it } from 'vitest';
import { trainStep, type StepResult } from '../src/index.js';
import { STEPS, adamsOf, flatParams, stepInputs, tinyF64 } from './parallel-common.js';

const script = fileURLToPath(new URL('./ranks/parallel-step.ts', import.meta.url));
let ref: { results: StepResult[]; params: Float64Array };

beforeAll(async () => {
  const model = tinyF64();
  model.train();
  const adams = adamsOf(model);
  const results: StepResult[] = [];
  for (let s = 0; s < STEPS; s++) results.push(await trainStep(model, adams, model.parameters(), stepInputs(s, 1)));
  ref = { results, params: flatParams(model) };
}, 300_000);

const cases: { parallel: string; nproc: number; zero: boolean }[] = [
  { parallel: 'dp=2,ep=2', nproc: 4, zero: false },
  { parallel: 'dp=2,ep=2', nproc: 4, zero: true },
  { parallel: 'dp=1,ep=4', nproc: 4, zero: true },
];

describe('parallel training step equals one process (tiny preset, f64)', () => {
  for (const c of cases) {
    it(`${c.parallel} on ${c.nproc} ranks, ZeRO-1 ${c.zero ? 'on' : 'off'}`, { timeout: 600_000 }, async () => {
      const log = new PassThrough();
      let text = '';
      log.on('data', (d) => (text += d));
      const res = await launchLocal({ nproc: c.nproc, script, env: { PARALLEL: c.parallel, ZERO: c.zero ? '1' : '0' }, timeoutMs: 580_000, stdout: log, stderr: log });
      for (const r of res) expect(r.error, `rank ${r.rank}: ${r.error?.stack}\n${text}`).toBeUndefined();
      const got = res[0]!.result as { results: StepResult[]; params: Float64Array };
      for (const rk of res) {
        const rr = (rk.result as { results: StepResult[] }).results;
        rr.forEach((s, i) => expect(s.loss, `rank ${rk.rank} step ${i + 1}`).toBe(got.results[i]!.loss));
      }
      got.results.forEach((s, i) => {
        const e = ref.results[i]!;
        for (const k of ['loss', 'mainLoss', 'mtpLoss', 'balanceLoss', 'gradNorm'] as const) {
          expect(Math.abs((s[k] as number) - (e[k] as number)), `step ${i + 1} ${k}: ${s[k]} vs ${e[k]}`).toBeLessThanOrEqual(1e-11 * Math.abs(e[k] as number));
        }
        expect(s.maxVio).toEqual(e.maxVio);
      });
      expect(relativeError(got.params, ref.params)).toBeLessThan(1e-10);
    });
  }
});
