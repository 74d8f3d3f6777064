// Reads the rank layout from the variables the launchers and schedulers clusters already run set:
// torchrun / dsv3-run / Kubeflow PyTorchJob (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...), OpenMPI
// (OMPI_COMM_WORLD_*), MPICH / Hydra (PMI_*), Slurm (SLURM_*), Kubernetes Indexed Jobs
// (JOB_COMPLETION_INDEX). A partial set fails with "X expected, but not set" naming the launcher.

export type Launcher = 'dsv3-run' | 'torchrun' | 'kubeflow' | 'openmpi' | 'mpich' | 'slurm' | 'kubernetes' | 'single';

export interface LaunchEnv {
  launcher: Launcher;
  rank: number;
  worldSize: number;
  localRank: number;
  localWorldSize: number;
  /** Index of this machine (node) in the job, where the launcher says. */
  nodeRank?: number;
  /** Where rank 0 hosts the rendezvous store (needed by the tcp transport). */
  masterAddr?: string;
  masterPort?: number;
}

type Env = Record<string, string | undefined>;

function need(env: Env, name: string, launcher: string): string {
  const v = env[name];
  if (v === undefined || v === '') throw new Error(`${name} expected, but not set (${launcher} environment)`);
  return v;
}

function int(name: string, v: string, min: number): number {
  if (!/^\d+$/.test(v.trim()) || Number(v) < min)
    throw new Error(`${name}=${JSON.stringify(v)}: expected an integer >= ${min}`);
  return Number(v);
}

function optInt(env: Env, name: string, min: number): number | undefined {
  const v = env[name];
  return v === undefined || v === '' ? undefined : int(name, v, min);
}

function master(env: Env, fallbackAddr?: string, fallbackPort?: number): { masterAddr?: string; masterPort?: number } {
  const addr = env.MASTER_ADDR || fallbackAddr;
  const port = optInt(env, 'MASTER_PORT', 1) ?? fallbackPort;
  if (port !== undefined && port > 65535) throw new Error(`MASTER_PORT=${port}: expected a TCP port (1-65535)`);
  return { ...(addr ? { masterAddr: addr } : {}), ...(port !== undefined ? { masterPort: port } : {}) };
}

function check(e: LaunchEnv): LaunchEnv {
  if (e.rank >= e.worldSize)
    throw new Error(`rank ${e.rank} is out of range for a world of ${e.worldSize} ranks (${e.launcher} environment)`);
  if (e.localRank >= e.localWorldSize)
    throw new Error(
      `local rank ${e.localRank} is out of range for ${e.localWorldSize} ranks per node (${e.launcher} environment)`,
    );
  return e;
}

/** Slurm's compressed host list ("gpu[01-04,07],cpu5") → its first host name. */
export function firstSlurmHost(nodelist: string): string {
  const m = /^([^,[]+)(?:\[([^\]]+)\])?/.exec(nodelist.trim());
  if (!m) throw new Error(`SLURM_JOB_NODELIST=${JSON.stringify(nodelist)}: cannot read a host name from it`);
  if (!m[2]) return m[1]!;
  const first = m[2].split(',')[0]!.split('-')[0]!;
  return m[1]! + first;
}

/** Slurm's SLURM_TASKS_PER_NODE ("4(x2),3") → the tasks on node `nodeId`. */
export function slurmTasksOnNode(spec: string, nodeId: number): number {
  let node = 0;
  for (const part of spec.split(',')) {
    const m = /^(\d+)(?:\(x(\d+)\))?$/.exec(part.trim());
    if (!m) throw new Error(`SLURM_TASKS_PER_NODE=${JSON.stringify(spec)}: unrecognised entry ${JSON.stringify(part)}`);
    node += m[2] ? Number(m[2]) : 1;
    if (nodeId < node) return Number(m[1]);
  }
  throw new Error(`SLURM_TASKS_PER_NODE=${JSON.stringify(spec)} lists no tasks for node ${nodeId}`);
}

export function detectLaunchEnv(env: Env = process.env): LaunchEnv {
  if (env.RANK !== undefined || (env.WORLD_SIZE !== undefined && env.JOB_COMPLETION_INDEX === undefined)) {
    const launcher: Launcher = env.DSV3_RUN
      ? 'dsv3-run'
      : env.TORCHELASTIC_RUN_ID
        ? 'torchrun'
        : env.KUBERNETES_SERVICE_HOST
          ? 'kubeflow'
          : 'torchrun';
    const worldSize = int('WORLD_SIZE', need(env, 'WORLD_SIZE', launcher), 1);
    const rank = int('RANK', need(env, 'RANK', launcher), 0);
    const localWorldSize = optInt(env, 'LOCAL_WORLD_SIZE', 1) ?? (launcher === 'kubeflow' ? 1 : worldSize);
    const localRank = optInt(env, 'LOCAL_RANK', 0) ?? (launcher === 'kubeflow' ? 0 : rank);
    const nodeRank = optInt(env, 'GROUP_RANK', 0) ?? optInt(env, 'NODE_RANK', 0);
    return check({
      launcher,
      rank,
      worldSize,
      localRank,
      localWorldSize,
      ...(nodeRank !== undefined ? { nodeRank } : {}),
      ...master(env),
    });
  }
  if (env.OMPI_COMM_WORLD_RANK !== undefined || env.OMPI_COMM_WORLD_SIZE !== undefined) {
    const l = 'openmpi';
    const worldSize = int('OMPI_COMM_WORLD_SIZE', need(env, 'OMPI_COMM_WORLD_SIZE', l), 1);
    return check({
      launcher: l,
      rank: int('OMPI_COMM_WORLD_RANK', need(env, 'OMPI_COMM_WORLD_RANK', l), 0),
      worldSize,
      localRank: optInt(env, 'OMPI_COMM_WORLD_LOCAL_RANK', 0) ?? 0,
      localWorldSize: optInt(env, 'OMPI_COMM_WORLD_LOCAL_SIZE', 1) ?? 1,
      ...(env.OMPI_COMM_WORLD_NODE_RANK
        ? { nodeRank: int('OMPI_COMM_WORLD_NODE_RANK', env.OMPI_COMM_WORLD_NODE_RANK, 0) }
        : {}),
      ...master(env),
    });
  }
  if (env.PMI_RANK !== undefined || env.PMI_SIZE !== undefined) {
    const l = 'mpich';
    return check({
      launcher: l,
      rank: int('PMI_RANK', need(env, 'PMI_RANK', l), 0),
      worldSize: int('PMI_SIZE', need(env, 'PMI_SIZE', l), 1),
      localRank: optInt(env, 'MPI_LOCALRANKID', 0) ?? 0,
      localWorldSize: optInt(env, 'MPI_LOCALNRANKS', 1) ?? 1,
      ...master(env),
    });
  }
  if (env.SLURM_PROCID !== undefined) {
    const l = 'slurm';
    const worldSize = int('SLURM_NTASKS', env.SLURM_NTASKS ?? env.SLURM_NPROCS ?? need(env, 'SLURM_NTASKS', l), 1);
    const nodeRank = optInt(env, 'SLURM_NODEID', 0) ?? 0;
    const perNode = env.SLURM_TASKS_PER_NODE ? slurmTasksOnNode(env.SLURM_TASKS_PER_NODE, nodeRank) : worldSize;
    const jobId = optInt(env, 'SLURM_JOB_ID', 0) ?? optInt(env, 'SLURM_JOBID', 0);
    const nodelist = env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST;
    return check({
      launcher: l,
      rank: int('SLURM_PROCID', env.SLURM_PROCID, 0),
      worldSize,
      localRank: optInt(env, 'SLURM_LOCALID', 0) ?? 0,
      localWorldSize: perNode,
      nodeRank,
      // The store's port is derived from the job id (so concurrent jobs on a node do not collide)
      // unless MASTER_PORT says otherwise; its host is the allocation's first node.
      ...master(
        env,
        nodelist ? firstSlurmHost(nodelist) : undefined,
        jobId !== undefined ? 20000 + (jobId % 20000) : undefined,
      ),
    });
  }
  if (env.JOB_COMPLETION_INDEX !== undefined) {
    const l = 'kubernetes';
    const index = int('JOB_COMPLETION_INDEX', env.JOB_COMPLETION_INDEX, 0);
    // One pod per rank; WORLD_SIZE (set in the Job's manifest) gives the number of pods.
    const worldSize = int('WORLD_SIZE', env.WORLD_SIZE ?? need(env, 'WORLD_SIZE', l), 1);
    need(env, 'MASTER_ADDR', l);
    return check({
      launcher: l,
      rank: index,
      worldSize,
      localRank: 0,
      localWorldSize: 1,
      nodeRank: index,
      ...master(env),
    });
  }
  return { launcher: 'single', rank: 0, worldSize: 1, localRank: 0, localWorldSize: 1 };
}
