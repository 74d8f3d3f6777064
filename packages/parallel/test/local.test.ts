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
      });
      for (const r of res) {
        expect(r.error, `rank ${r.rank}: ${r.error?.stack}\n${text}`).toBeUndefined();
        expect(r.result, text).toMatchObject({ rank: r.rank, size: nproc, backend: 'local', failures: [] });
        expect(r.exitCode).toBe(0);
      }
    });
  }
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
