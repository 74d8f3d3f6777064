// dsv3-plan as a user runs it (from source through tsx): JSON output and the exit status and message of a bad layout.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { presetConfig, toHfConfig } from '@dsv3/model';
import { describe, expect, it } from 'vitest';
import { H800 } from '../src/index.js';

const cli = fileURLToPath(new URL('../src/plan/cli.ts', import.meta.url));
const run = (...args: string[]) =>
  spawnSync(process.execPath, ['--import', 'tsx', '--conditions=@dsv3/source', cli, ...args], {
    encoding: 'utf8',
    timeout: 120_000,
  });

describe('dsv3-plan CLI', () => {
  it('train --json prints the plan; a table without it', { timeout: 150_000 }, () => {
    const j = run(
      'train',
      '--model',
      'tiny-v3',
      '--parallel',
      'dp=1,pp=2,ep=2',
      '--pp-schedule',
      'zb1p',
      '--seq',
      '128',
      '--global-batch',
      '8',
      '--json',
    );
    expect(j.status, j.stderr).toBe(0);
    const plan = JSON.parse(j.stdout) as { world: number; chunks: number; memory: { fits: boolean } };
    expect(plan).toMatchObject({ world: 4, chunks: 4, memory: { fits: true } });
    const t = run('schedule', '--kind', 'dualpipe', '--ranks', '4', '--chunks', '8');
    expect(t.status, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/dualpipe: 4 ranks, 8 chunks, 4 stages; makespan .*2x parameters/);
  });

  it('reads an HF config.json and a cluster description file', { timeout: 150_000 }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'dsv3-plan-'));
    try {
      writeFileSync(join(dir, 'config.json'), JSON.stringify(toHfConfig(presetConfig('tiny-v3'))));
      writeFileSync(
        join(dir, 'cluster.json'),
        JSON.stringify({ ...H800, name: 'half-h800', hbmBytes: 40e9, gpusPerNode: 4 }),
      );
      const r = run(
        'train',
        '--model',
        join(dir, 'config.json'),
        '--cluster',
        join(dir, 'cluster.json'),
        '--parallel',
        'dp=1,pp=2,ep=4',
        '--seq',
        '128',
        '--global-batch',
        '16',
        '--json',
      );
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ world: 8, memory: { hbm: 40e9 } });
      writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...H800, ibBandwidth: -1 }));
      const bad = run('train', '--cluster', join(dir, 'bad.json'));
      expect(bad.status).toBe(1);
      expect(bad.stderr).toMatch(/invalid cluster description: ibBandwidth/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // DualPipeV on 3 ranks would need 6 stages of a 4-layer model, so the nearest is ZB1P.
  it('an impossible layout exits 1 with the reason and the nearest layout that works', { timeout: 150_000 }, () => {
    const r = run(
      'train',
      '--model',
      'tiny-v3',
      '--parallel',
      'dp=1,pp=3,ep=1',
      '--seq',
      '128',
      '--global-batch',
      '12',
    );
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(
      /^dsv3-plan: impossible training layout: dualpipe: needs an even number of ranks .*got 3.*Nearest layout that works: dp=1,pp=3,ep=1,tp=1 zb1p/,
    );
    const bad = run('train', '--parallel', 'dp=2,zz=4');
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/cannot read 'zz=4'/);
  });
});
