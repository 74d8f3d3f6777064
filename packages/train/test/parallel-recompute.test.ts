// Selective recomputation stays bitwise under the parallel backward walkers: the expert-parallel one
// (communicating nodes awaited) and the pipeline's split B / W passes hand a recomputed module's input
// gradient on as its separate contributions (core's backwardParts), as one process's backward does.
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { launchLocal } from '@dsv3/parallel';
import { describe, expect, it } from 'vitest';

const script = fileURLToPath(new URL('./ranks/recompute-step.ts', import.meta.url));

const cases = [
  // expert parallel, no pipeline: backwardAsync
  { parallel: 'ep=2', schedule: '1f1b', micro: 1 },
  // pipeline with weight gradients deferred to W, experts over 2 ranks inside each stage
  { parallel: 'pp=2,ep=2', schedule: 'zb1p', micro: 2 },
  // DualPipe's overlapped forward/backward pairs
  { parallel: 'pp=2', schedule: 'dualpipe', micro: 2 },
];

describe('selective recomputation under expert and pipeline parallelism (tiny, f32)', () => {
  for (const c of cases)
    it(`${c.parallel} (${c.schedule}): the same gradients and weights bit for bit`, { timeout: 600_000 }, async () => {
      const log = new PassThrough();
      let text = '';
      log.on('data', (d) => (text += d));
      const nproc = c.parallel === 'pp=2,ep=2' ? 4 : 2;
      const env = { PARALLEL: c.parallel, SCHEDULE: c.schedule, MICRO: String(c.micro) };
      const res = await launchLocal({ nproc, script, env, timeoutMs: 580_000, stdout: log, stderr: log });
      for (const r of res) expect(r.error, `rank ${r.rank}: ${r.error?.stack}\n${text}`).toBeUndefined();
      for (const r of res) {
        const got = r.result as {
          lossPlain: number;
          lossRecompute: number;
          gradsDiffering: number;
          paramsDiffering: number;
          count: number;
        };
        expect(got.count).toBeGreaterThan(0);
        expect(got.lossRecompute, `rank ${r.rank} loss`).toBe(got.lossPlain);
        expect(got.gradsDiffering, `rank ${r.rank}: gradient values differing of ${got.count}`).toBe(0);
        expect(got.paramsDiffering, `rank ${r.rank}: weights differing of ${got.count}`).toBe(0);
      }
    });
});
