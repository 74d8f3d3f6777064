import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { cli, pkgRoot, rankScript, runJob } from './helpers/run-job.js';

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('dsv3-run', () => {
  it('no rank outlives a launcher that is killed (SIGKILL: no chance to clean up)', { timeout: 120_000 }, async () => {
    const launcher = spawn(
      process.execPath,
      ['--import', 'tsx', '--conditions=@dsv3/source', cli, '--nproc', '2', rankScript('fault.ts'), 'killed'],
      {
        cwd: pkgRoot,
        env: { ...process.env, FAULT_TIMEOUT_MS: '60000' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    launcher.stdout.on('data', (d) => (out += d));
    launcher.stderr.on('data', (d) => (out += d));
    const deadline = Date.now() + 90_000;
    while ([...out.matchAll(/DSV3_READY pid=(\d+)/g)].length < 2 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 100));
    const pids = [...out.matchAll(/DSV3_READY pid=(\d+)/g)].map((m) => Number(m[1]));
    expect(pids.length, out).toBe(2);
    launcher.kill('SIGKILL');
    const gone = Date.now() + 10_000;
    while (pids.some(alive) && Date.now() < gone) await new Promise((r) => setTimeout(r, 100));
    expect(pids.filter(alive), 'ranks still running after their launcher died').toEqual([]);
  });

  it('rejects bad arguments with a clear message', { timeout: 60_000 }, async () => {
    const a = await runJob(['--nproc', '2', '--nnodes', '2', rankScript('print-env.ts')]);
    expect(a.code).not.toBe(0);
    expect(a.output).toContain('--master ADDR:PORT is required when --nnodes > 1');
    const b = await runJob(['--nproc', '0', rankScript('print-env.ts')]);
    expect(b.output).toMatch(/--nproc.*expected a positive integer/);
    const c = await runJob(['--nproc', '2', '--transport', 'mpi', rankScript('print-env.ts')]);
    expect(c.output).toContain('start MPI jobs with mpirun or srun');
  });

  it('--threads runs the ranks as worker threads (the local transport)', { timeout: 120_000 }, async () => {
    const job = await runJob(['--nproc', '3', '--threads', rankScript('check-collectives.ts')]);
    expect(job.code, job.output).toBe(0);
    expect(job.output).toMatch(/^\[rank 2\] DSV3_RESULT \{"rank":2,"size":3,"backend":"local","failures":\[\]\}/m);
  });
});
