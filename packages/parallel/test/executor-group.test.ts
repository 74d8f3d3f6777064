// The pipeline executor over real ProcessGroups: worker-thread ranks (local transport) and separate
// processes under dsv3-run (TCP), against the unsplit model each rank recomputes.
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { launchLocal } from '../src/index.js';
import { rankScript, runJob } from './helpers/run-job.js';

// f64; only the order of the micro-batch and copy sums differs from the reference.
const TOL = 1e-12;

function check(
  results: { rank: number; stages: number[]; losses: number[]; maxGradError: number; maxLossError: number }[],
  nproc: number,
  chunks: number,
  out: string,
): void {
  expect(results.length, out).toBe(nproc);
  for (const r of results) {
    expect(r.maxGradError, `rank ${r.rank}`).toBeLessThan(TOL);
    expect(r.maxLossError, `rank ${r.rank}`).toBeLessThan(TOL);
  }
  expect(results.flatMap((r) => r.losses).sort((a, b) => a - b)).toEqual(Array.from({ length: chunks }, (_, m) => m));
}

describe('runPipelineStep over a ProcessGroup', () => {
  for (const [kind, nproc, chunks] of [
    ['dualpipe', 4, 8],
    ['dualpipev', 2, 5],
  ] as const) {
    it(`${kind} on ${nproc} worker-thread ranks equals the unsplit model`, { timeout: 280_000 }, async () => {
      const sink = new PassThrough();
      let text = '';
      sink.on('data', (d) => (text += d));
      const res = await launchLocal({
        nproc,
        script: rankScript('pipeline-step.ts'),
        args: [kind, String(chunks)],
        timeoutMs: 240_000,
        stdout: sink,
        stderr: sink,
      });
      for (const r of res) expect(r.error, `rank ${r.rank}: ${r.error?.stack}\n${text}`).toBeUndefined();
      check(
        res.map((r) => r.result as never),
        nproc,
        chunks,
        text,
      );
    });
  }

  it('zb1p on 4 processes under dsv3-run (TCP) equals the unsplit model', { timeout: 280_000 }, async () => {
    const job = await runJob(['--nproc', '4', rankScript('pipeline-step.ts'), 'zb1p', '5'], { timeoutMs: 240_000 });
    expect(job.code, job.output).toBe(0);
    check(job.results as never, 4, 5, job.output);
  });

  it('a rank dying mid-step stops every other rank with the runtime error naming it', {
    timeout: 280_000,
  }, async () => {
    const sink = new PassThrough();
    sink.resume();
    const res = await launchLocal({
      nproc: 4,
      script: rankScript('pipeline-step.ts'),
      args: ['dualpipe', '8'],
      env: { PIPELINE_FAIL_RANK: '1' },
      timeoutMs: 240_000,
      stdout: sink,
      stderr: sink,
    });
    expect(res[1]!.exitCode).toBe(3);
    for (const r of res.filter((x) => x.rank !== 1)) {
      const err = (r.result as { error?: string } | undefined)?.error ?? r.error?.message ?? '';
      // Every rank waiting on rank 1 learns it failed, in which operation (or that a rank aborted).
      expect(err, `rank ${r.rank}`).toMatch(
        /rank 1 failed \(its thread exited with code 3\) during (RECV|SEND) #\d+|rank \d aborted/,
      );
    }
  });
});
