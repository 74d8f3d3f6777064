import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { mpiAvailable } from '../src/comm/mpi.js';
import { rankScript, runJob } from './helpers/run-job.js';

const hasMpirun = spawnSync('mpirun', ['--version'], { stdio: 'ignore' }).status === 0;
const ready = hasMpirun && mpiAvailable();
if (!ready)
  console.warn(
    '[dsv3] mpirun / mpicc (OpenMPI) not found: skipping the mpi transport tests (CI installs openmpi-bin and libopenmpi-dev)',
  );

const mpirun = (np: number) => [
  'mpirun',
  '--allow-run-as-root',
  '--oversubscribe',
  '-np',
  String(np),
  process.execPath,
  '--import',
  'tsx',
  '--conditions=@dsv3/source',
];

describe.skipIf(!ready)('mpi transport (OpenMPI through the N-API addon, under mpirun)', () => {
  for (const np of [2, 3, 4]) {
    it(`every collective matches the sequential reference with ${np} ranks`, { timeout: 300_000 }, async () => {
      const job = await runJob([rankScript('check-collectives.ts')], { cmd: mpirun(np), timeoutMs: 280_000 });
      expect(job.code, job.output).toBe(0);
      expect(job.results.length, job.output).toBe(np);
      for (const r of job.results) expect(r, job.output).toMatchObject({ size: np, backend: 'mpi', failures: [] });
    });
  }

  it("recognises mpirun's OMPI_COMM_WORLD_* variables", { timeout: 120_000 }, async () => {
    const job = await runJob([rankScript('print-env.ts')], { cmd: mpirun(3) });
    expect(job.code, job.output).toBe(0);
    const ranks = job.results.map((r) => r.rank).sort();
    expect(ranks).toEqual([0, 1, 2]);
    for (const r of job.results) expect(r).toMatchObject({ launcher: 'openmpi', worldSize: 3, localWorldSize: 3 });
  });
});
