import { describe, expect, it } from 'vitest';
import { rankScript, runJob } from './helpers/run-job.js';

describe('tcp transport (processes under dsv3-run)', () => {
  for (const nproc of [2, 3, 4, 8]) {
    it(`every collective matches the sequential reference with ${nproc} ranks`, { timeout: 300_000 }, async () => {
      const job = await runJob(['--nproc', String(nproc), rankScript('check-collectives.ts')], { timeoutMs: 280_000 });
      expect(job.code, job.output).toBe(0);
      expect(job.results.length, job.output).toBe(nproc);
      for (const r of job.results) {
        expect(r, job.output).toMatchObject({ size: nproc, backend: 'tcp', failures: [] });
        // One host: every peer is read over a Unix domain socket.
        expect(r.links).toEqual(Array.from({ length: nproc }, (_, i) => (i === r.rank ? null : 'unix')));
      }
      expect(job.output).toMatch(/^\[rank 0\] DSV3_RESULT/m); // output is prefixed with the rank
    });
  }
  for (const nproc of [3, 4]) {
    it(`every collective matches the reference over loopback TCP (DSV3_TCP_SAME_HOST=tcp), ${nproc} ranks`, {
      timeout: 300_000,
    }, async () => {
      const job = await runJob(['--nproc', String(nproc), rankScript('check-collectives.ts')], {
        timeoutMs: 280_000,
        env: { DSV3_TCP_SAME_HOST: 'tcp' },
      });
      expect(job.code, job.output).toBe(0);
      expect(job.results.length, job.output).toBe(nproc);
      for (const r of job.results) {
        expect(r, job.output).toMatchObject({ size: nproc, backend: 'tcp', failures: [] });
        expect(r.links).toEqual(Array.from({ length: nproc }, (_, i) => (i === r.rank ? null : 'tcp')));
      }
    });
  }
});

describe('tcp transport faults', () => {
  it('a rank that dies makes every other rank fail naming it and the operation; the launcher stops the job after the others reported', {
    timeout: 120_000,
  }, async () => {
    const job = await runJob(['--nproc', '3', rankScript('fault.ts'), 'die'], {
      env: { FAULT_VICTIM: '1', FAULT_TIMEOUT_MS: '5000', FAULT_REPORT_DELAY_MS: '300' },
    });
    expect(job.code, job.output).toBe(3);
    expect(job.output).toMatch(/\[dsv3-run\] rank 1 exited with code 3/);
    const others = job.results;
    expect(others.length, job.output).toBe(2); // both survivors report before the launcher's SIGTERM
    for (const r of others) {
      expect(r.error as string).toMatch(
        /^rank 1 closed its connection \(its process exited or was killed\) during ALLREDUCE #\d+ \(group 0/,
      );
      expect(r.ms as number).toBeLessThan(30_000);
    }
  });

  it('a rank that dies mid-window (direct exchange held back by READYs) makes the others fail naming it', {
    timeout: 120_000,
  }, async () => {
    const job = await runJob(['--nproc', '3', rankScript('fault.ts'), 'die'], {
      env: { FAULT_VICTIM: '1', FAULT_TIMEOUT_MS: '5000', FAULT_REPORT_DELAY_MS: '300', FAULT_WINDOW: '1' },
    });
    expect(job.code, job.output).toBe(3);
    expect(job.results.length, job.output).toBe(2);
    for (const r of job.results) {
      expect(r.error as string).toMatch(
        /^rank 1 closed its connection \(its process exited or was killed\) during ALLREDUCE #\d+ \(group 0/,
      );
      expect(r.ms as number).toBeLessThan(30_000);
    }
  });

  it('a rank that hangs makes the others time out naming the rank they wait for', { timeout: 120_000 }, async () => {
    const job = await runJob(['--nproc', '3', rankScript('fault.ts'), 'hang'], {
      env: { FAULT_VICTIM: '2', FAULT_TIMEOUT_MS: '3000' },
    });
    for (const r of job.results) {
      // Waiting for the hung rank 2 (and, in a direct-exchange all-reduce, for the rank waiting on it).
      expect(r.error as string).toMatch(
        /ALLREDUCE #2 \(group 0, the world; this is rank \d\) timed out after 3000 ms: still waiting for (rank 2|ranks [\d, ]*2)$|rank \d aborted \(ALLREDUCE #2 \(group 0\) timed out there\) during ALLREDUCE #2/,
      );
      expect(r.ms as number).toBeLessThan(30_000);
    }
    expect(job.results.length, job.output).toBe(2);
  });
});
