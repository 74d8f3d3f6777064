import { describe, expect, it } from 'vitest';
import { detectLaunchEnv, firstSlurmHost, slurmTasksOnNode } from '../src/index.js';
import { rankScript, runJob } from './helpers/run-job.js';

describe('launch environments', () => {
  it('torchrun (documented variables, including TORCHELASTIC_RUN_ID)', () => {
    const e = detectLaunchEnv({
      RANK: '5',
      WORLD_SIZE: '8',
      LOCAL_RANK: '1',
      LOCAL_WORLD_SIZE: '4',
      GROUP_RANK: '1',
      MASTER_ADDR: 'node0',
      MASTER_PORT: '29500',
      TORCHELASTIC_RUN_ID: 'abc',
    });
    expect(e).toEqual({
      launcher: 'torchrun',
      rank: 5,
      worldSize: 8,
      localRank: 1,
      localWorldSize: 4,
      nodeRank: 1,
      masterAddr: 'node0',
      masterPort: 29500,
    });
  });

  it('Kubeflow PyTorchJob (RANK per pod, MASTER_ADDR <job>-master-0, inside Kubernetes)', () => {
    const e = detectLaunchEnv({
      RANK: '2',
      WORLD_SIZE: '4',
      MASTER_ADDR: 'train-master-0',
      MASTER_PORT: '23456',
      KUBERNETES_SERVICE_HOST: '10.96.0.1',
      PET_NNODES: '4',
    });
    expect(e).toMatchObject({
      launcher: 'kubeflow',
      rank: 2,
      worldSize: 4,
      localRank: 0,
      localWorldSize: 1,
      masterAddr: 'train-master-0',
      masterPort: 23456,
    });
  });

  it('Kubernetes Indexed Job (JOB_COMPLETION_INDEX per pod, WORLD_SIZE and MASTER_ADDR from the manifest)', () => {
    const e = detectLaunchEnv({
      JOB_COMPLETION_INDEX: '3',
      WORLD_SIZE: '4',
      MASTER_ADDR: 'dsv3-0.dsv3',
      MASTER_PORT: '29500',
      KUBERNETES_SERVICE_HOST: '10.96.0.1',
    });
    expect(e).toEqual({
      launcher: 'kubernetes',
      rank: 3,
      worldSize: 4,
      localRank: 0,
      localWorldSize: 1,
      nodeRank: 3,
      masterAddr: 'dsv3-0.dsv3',
      masterPort: 29500,
    });
    expect(() => detectLaunchEnv({ JOB_COMPLETION_INDEX: '0', MASTER_ADDR: 'x' })).toThrow(
      'WORLD_SIZE expected, but not set (kubernetes environment)',
    );
  });

  it('Slurm (SLURM_PROCID / NTASKS / LOCALID / NODEID, compressed node list, per-node task counts)', () => {
    const e = detectLaunchEnv({
      SLURM_PROCID: '6',
      SLURM_NTASKS: '8',
      SLURM_LOCALID: '2',
      SLURM_NODEID: '1',
      SLURM_TASKS_PER_NODE: '4(x2)',
      SLURM_JOB_NODELIST: 'gpu[07-08]',
      SLURM_JOB_ID: '123456',
    });
    expect(e).toEqual({
      launcher: 'slurm',
      rank: 6,
      worldSize: 8,
      localRank: 2,
      localWorldSize: 4,
      nodeRank: 1,
      masterAddr: 'gpu07',
      masterPort: 20000 + (123456 % 20000),
    });
    expect(firstSlurmHost('node[001-004,010],login1')).toBe('node001');
    expect(firstSlurmHost('single')).toBe('single');
    expect(slurmTasksOnNode('4(x2),3', 2)).toBe(3);
    expect(
      detectLaunchEnv({ SLURM_PROCID: '0', SLURM_NTASKS: '2', MASTER_ADDR: 'h', MASTER_PORT: '1234' }),
    ).toMatchObject({ masterAddr: 'h', masterPort: 1234 });
  });

  it('OpenMPI and MPICH (Hydra) variables', () => {
    expect(
      detectLaunchEnv({
        OMPI_COMM_WORLD_RANK: '1',
        OMPI_COMM_WORLD_SIZE: '2',
        OMPI_COMM_WORLD_LOCAL_RANK: '1',
        OMPI_COMM_WORLD_LOCAL_SIZE: '2',
      }),
    ).toEqual({
      launcher: 'openmpi',
      rank: 1,
      worldSize: 2,
      localRank: 1,
      localWorldSize: 2,
    });
    expect(detectLaunchEnv({ PMI_RANK: '3', PMI_SIZE: '4', MPI_LOCALRANKID: '0', MPI_LOCALNRANKS: '1' })).toMatchObject(
      { launcher: 'mpich', rank: 3, worldSize: 4 },
    );
  });

  it('fails clearly on partial or bad variables', () => {
    expect(() => detectLaunchEnv({ RANK: '0' })).toThrow('WORLD_SIZE expected, but not set (torchrun environment)');
    expect(() => detectLaunchEnv({ WORLD_SIZE: '2' })).toThrow('RANK expected, but not set');
    expect(() => detectLaunchEnv({ RANK: '2', WORLD_SIZE: '2' })).toThrow(
      'rank 2 is out of range for a world of 2 ranks',
    );
    expect(() => detectLaunchEnv({ RANK: 'x', WORLD_SIZE: '2' })).toThrow('RANK="x": expected an integer >= 0');
    expect(() => detectLaunchEnv({ OMPI_COMM_WORLD_RANK: '0' })).toThrow(
      'OMPI_COMM_WORLD_SIZE expected, but not set (openmpi environment)',
    );
    expect(() => detectLaunchEnv({ RANK: '0', WORLD_SIZE: '1', MASTER_PORT: '70000' })).toThrow(
      'MASTER_PORT=70000: expected a TCP port',
    );
    expect(detectLaunchEnv({})).toEqual({ launcher: 'single', rank: 0, worldSize: 1, localRank: 0, localWorldSize: 1 });
  });

  it('dsv3-run sets the torchrun variables for every rank', { timeout: 120_000 }, async () => {
    const job = await runJob(['--nproc', '3', rankScript('print-env.ts')]);
    expect(job.code, job.output).toBe(0);
    const byRank = job.results.sort((a, b) => (a.rank as number) - (b.rank as number));
    expect(byRank.map((r) => r.rank)).toEqual([0, 1, 2]);
    for (const r of byRank)
      expect(r).toMatchObject({
        launcher: 'dsv3-run',
        worldSize: 3,
        localWorldSize: 3,
        localRank: r.rank,
        masterAddr: '127.0.0.1',
      });
  });
});
