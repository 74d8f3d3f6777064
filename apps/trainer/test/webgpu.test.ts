// dsv3-train --backend webgpu (lavapipe in CI): the CLI trains on the GPU and its losses equal the CPU
// run's. Skips with a visible warning without an adapter, unless DSV3_REQUIRE_WEBGPU=1.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { webGpuForTests } from '@dsv3/core/node';
import { readMetrics, type StepRecord } from '@dsv3/train';
import { main } from '../src/cli.js';

const MICRO = join(__dirname, 'fixtures', 'micro.json');
let gpu: Awaited<ReturnType<typeof webGpuForTests>> = null;
// Whether an adapter exists (the CLI creates and releases its own device).
beforeAll(async () => {
  gpu = await webGpuForTests('trainer');
}, 120_000);
afterAll(() => gpu?.dispose());

async function cli(...argv: string[]): Promise<{ code: number; err: string }> {
  let err = '';
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
    err += String(s);
    return true;
  });
  const o = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
  try {
    return { code: await main(argv), err };
  } finally {
    e.mockRestore();
    o.mockRestore();
  }
}

describe('dsv3-train --backend webgpu', () => {
  it('trains the micro config (fp32 recipe, MTP, balance loss) with the CPU run’s losses (rel ≤ 1e-4)', async (ctx) => {
    if (!gpu) return ctx.skip();
    const losses = async (backend: string) => {
      const out = join(mkdtempSync(join(tmpdir(), `dsv3-trainer-${backend}-`)), 'run');
      const r = await cli(
        '--config',
        MICRO,
        '--precision',
        'fp32',
        '--steps',
        '2',
        '--out',
        out,
        '--backend',
        backend,
        '--no-progress',
      );
      expect(r.code, r.err).toBe(0);
      return readMetrics(join(out, 'metrics.jsonl'))
        .filter((m): m is StepRecord => m.kind === 'train')
        .map((m) => m.loss);
    };
    const cpu = await losses('cpu');
    const web = await losses('webgpu');
    expect(web).toHaveLength(2);
    web.forEach((l, i) => expect(Math.abs(l - cpu[i]!) / cpu[i]!, `step ${i + 1}`).toBeLessThanOrEqual(1e-4));
  }, 600_000);
});
