import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { launchLocal } from '../src/index.js';

const script = fileURLToPath(new URL('./ranks/check-collectives.ts', import.meta.url));

describe('local transport (worker threads + SharedArrayBuffer)', () => {
  for (const nproc of [2, 3, 4, 8]) {
    it(`every collective matches the sequential reference with ${nproc} ranks`, { timeout: 300_000 }, async () => {
      const out = new PassThrough();
      let text = '';
      out.on('data', (d) => (text += d));
      const res = await launchLocal({
        nproc,
        script,
        timeoutMs: 280_000,
        stdout: out,
        stderr: out,
        channelBytes: nproc > 4 ? 64 << 10 : undefined,
        // Small staging pieces for 3 and 8 ranks: large messages move in many pieces.
        pieceBytes: nproc === 3 || nproc === 8 ? 4096 : undefined,
      });
      for (const r of res) {
        expect(r.error, `rank ${r.rank}: ${r.error?.stack}\n${text}`).toBeUndefined();
        expect(r.result, text).toMatchObject({ rank: r.rank, size: nproc, backend: 'local', failures: [] });
        expect(r.exitCode).toBe(0);
      }
    });
  }
});

describe('local shared-memory collectives with ranks that disagree', () => {
  it('every rank gets an error naming the sizes, and the group stays usable', { timeout: 120_000 }, async () => {
    const out = new PassThrough();
    out.resume();
    const nproc = 3;
    const res = await launchLocal({
      nproc,
      script: fileURLToPath(new URL('./ranks/shm-disagree.ts', import.meta.url)),
      timeoutMs: 100_000,
      stdout: out,
      stderr: out,
    });
    for (const r of res) {
      expect(r.exitCode, r.error?.stack).toBe(0);
      const { errors, sum, a2a } = r.result as { errors: string[]; sum: number[]; a2a: number[] };
      expect(errors[0]).toMatch(
        /ALLREDUCE #1 .* rank 1 has 11 elements, this rank 10|rank 0 has 10 elements, this rank 11/,
      );
      expect(errors[0]).toMatch(/ranks disagree on the buffer size/);
      expect(errors[1]).toMatch(
        /ALLTOALL #2 .*rank \d sends 4 bytes to rank 0, which expects 8: ranks disagree on the buffer size/,
      );
      expect(sum).toEqual([6, 6, 6]);
      expect(a2a).toEqual([0, 10, 20].map((x) => x + r.rank));
    }
  });
});

describe('local transport faults', () => {
  const faultScript = fileURLToPath(new URL('./ranks/fault.ts', import.meta.url));
  for (const mode of ['die', 'hang'] as const) {
    it(`a rank that ${mode === 'die' ? 'dies' : 'hangs'} makes every other rank fail with its rank and the operation`, {
      timeout: 120_000,
    }, async () => {
      const out = new PassThrough();
      out.resume();
      const res = await launchLocal({
        nproc: 4,
        script: faultScript,
        args: [mode],
        env: { FAULT_VICTIM: '2', FAULT_TIMEOUT_MS: '3000' },
        timeoutMs: 100_000,
        stdout: out,
        stderr: out,
      });
      expect(res[2]!.exitCode).toBe(mode === 'die' ? 3 : 0);
      for (const r of res.filter((r) => r.rank !== 2)) {
        const { error, ms } = r.result as { error: string; ms: number };
        if (mode === 'die')
          expect(error).toMatch(/^rank 2 failed \(its thread exited with code 3\) during ALLREDUCE #\d+ \(group 0/);
        // The rank next to the hung one times out naming it; the others see that rank abort.
        else
          expect(error).toMatch(
            /ALLREDUCE #\d+ \(group 0, the world; this is rank \d\) timed out after 3000 ms: rank 2 never entered it; still waiting for rank \d|rank \d aborted \(an operation timed out or failed there\) during ALLREDUCE #\d+/,
          );
        expect(ms).toBeLessThan(60_000);
      }
    });
  }
});
