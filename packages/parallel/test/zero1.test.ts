import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { launchLocal } from '../src/index.js';

const script = fileURLToPath(new URL('./ranks/zero1.ts', import.meta.url));

describe('ZeRO-1 AdamW (3 local ranks, uneven blocks)', () => {
  it('steps like AdamW on the whole batch, with clipping, and resumes from its sharded checkpoint', {
    timeout: 300_000,
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'zero1-'));
    const log = new PassThrough();
    let text = '';
    log.on('data', (d) => (text += d));
    try {
      const res = await launchLocal({
        nproc: 3,
        script,
        env: { ZERO_DIR: dir },
        timeoutMs: 280_000,
        stdout: log,
        stderr: log,
      });
      for (const r of res) {
        expect(r.error, `rank ${r.rank}: ${r.error?.stack}\n${text}`).toBeUndefined();
        const o = r.result as Record<string, number | string>;
        // f64 master weights: the gradient sums (reduce-scatter vs one process) differ in order only.
        expect(o['f64.params']).toBeLessThan(1e-13);
        expect(o['f64.gradNorm']).toBeLessThan(1e-13);
        // f32 master weights, bf16 moments: the f32 sums differ by ~1e-7; a moment whose bf16 rounding that
        // flips (rare) moves its update by 2^-8 relative, hence the looser bound.
        expect(o['f32.params']).toBeLessThan(1e-4);
        expect(o['f32.gradNorm']).toBeLessThan(1e-5);
        expect(o.wrongLayout).toMatch(/zero1-rank-\d-of-4\.safetensors is missing; resume with the data-parallel size/);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
