// initProcessGroup(): the world group of this job, from the environment its launcher set.
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { detectLaunchEnv, type LaunchEnv } from './env.js';
import { DEFAULT_TIMEOUT_MS, ProcessGroup, type GroupOptions } from './group.js';
import { StoreClient, StoreServer } from './store.js';
import { TcpTransport } from './tcp.js';
import { sameHostFromEnv } from './same-host.js';
import { MpiTransport, mpiAvailable } from './mpi.js';
import { LOCAL_WORKER_KEY, type LocalWorkerData } from './launch-local.js';
import { LocalTransport } from './local.js';
import { SoloTransport } from './solo.js';
import type { Transport, TransportKind } from './transport.js';

export interface InitOptions extends GroupOptions {
  // timeoutMs (from GroupOptions) defaults to DSV3_TIMEOUT_MS, else 300 s.
  /** How long rendezvous may take (default: timeoutMs). */
  connectTimeoutMs?: number;
  /** Which transport to use; default: DSV3_TRANSPORT, else local in a local worker thread, mpi under
   *  mpirun (where the addon builds and MASTER_ADDR is not set), else tcp. */
  transport?: TransportKind;
  /** The environment to read (default process.env). */
  env?: Record<string, string | undefined>;
}

function localWorker(): LocalWorkerData | null {
  if (isMainThread || !workerData || typeof workerData !== 'object') return null;
  return ((workerData as Record<string, unknown>)[LOCAL_WORKER_KEY] as LocalWorkerData | undefined) ?? null;
}

/** The launch layout this process sees: a local worker thread's, or the launcher's variables. */
export function launchEnv(env: Record<string, string | undefined> = process.env): LaunchEnv {
  const local = localWorker();
  if (local)
    return {
      launcher: 'dsv3-run',
      rank: local.rank,
      worldSize: local.fabric.size,
      localRank: local.rank,
      localWorldSize: local.fabric.size,
    };
  return detectLaunchEnv(env);
}

export async function initProcessGroup(options: InitOptions = {}): Promise<ProcessGroup> {
  const env = options.env ?? process.env;
  const requested = options.transport ?? (env.DSV3_TRANSPORT as TransportKind | undefined);
  if (requested !== undefined && !['local', 'tcp', 'mpi'].includes(requested))
    throw new Error(`unknown transport ${JSON.stringify(requested)}; expected local, tcp or mpi`);
  const local = localWorker();
  let transport: Transport;
  if (local) {
    if (requested && requested !== 'local')
      throw new Error(`this rank is a local worker thread; it can only use the local transport, not ${requested}`);
    if (localInUse)
      throw new Error(
        'initProcessGroup() was already called in this local worker thread: its shared-memory rings carry one world; use newGroup() for sub-groups',
      );
    transport = localInUse = new LocalTransport(local.rank, local.fabric);
  } else {
    const le = detectLaunchEnv(env);
    if (requested === 'local')
      throw new Error(
        'the local transport joins worker threads started by launchLocal() or dsv3-run --threads; this is not one',
      );
    watchLauncher(env);
    const underMpi = le.launcher === 'openmpi' || le.launcher === 'mpich';
    if (requested === 'mpi' || (requested === undefined && underMpi && !le.masterAddr && mpiAvailable())) {
      transport = new MpiTransport();
      if (transport.size !== le.worldSize && le.launcher !== 'single')
        throw new Error(
          `the mpi transport sees ${transport.size} rank(s) but the ${le.launcher} environment says ${le.worldSize}: start MPI jobs with mpirun or srun --mpi=pmix, not ${le.launcher}`,
        );
    } else if (le.worldSize === 1 && requested === undefined) transport = new SoloTransport();
    else transport = await connectTcp(le, env, options);
  }
  const envTimeout = env.DSV3_TIMEOUT_MS ? Number(env.DSV3_TIMEOUT_MS) : undefined;
  if (envTimeout !== undefined && !(envTimeout > 0))
    throw new Error(
      `DSV3_TIMEOUT_MS=${JSON.stringify(env.DSV3_TIMEOUT_MS)}: expected a positive number of milliseconds`,
    );
  const timeoutMs = options.timeoutMs ?? envTimeout;
  return new ProcessGroup(
    transport,
    Array.from({ length: transport.size }, (_, i) => i),
    0,
    { ...options, ...(timeoutMs ? { timeoutMs } : {}) },
  );
}

// A local worker thread's shared-memory rings carry one world for the thread's life.
let localInUse: LocalTransport | null = null;

async function connectTcp(
  le: LaunchEnv,
  env: Record<string, string | undefined>,
  options: InitOptions,
): Promise<Transport> {
  const where = `${le.launcher} environment; the tcp transport meets at rank 0's rendezvous store`;
  if (!le.masterAddr) throw new Error(`MASTER_ADDR expected, but not set (${where})`);
  if (!le.masterPort) throw new Error(`MASTER_PORT expected, but not set (${where})`);
  const timeoutMs = options.connectTimeoutMs ?? options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const sameHost = sameHostFromEnv(env.DSV3_TCP_SAME_HOST);
  const server = le.rank === 0 ? await StoreServer.listen(le.masterPort) : null;
  const store = await StoreClient.connect(le.masterAddr, le.masterPort, timeoutMs);
  try {
    const t = await TcpTransport.connect(store, le.rank, le.worldSize, {
      connectTimeoutMs: timeoutMs,
      sameHost,
      ...(env.DSV3_BIND_ADDR ? { bindAddr: env.DSV3_BIND_ADDR } : {}),
      ...(env.DSV3_ADVERTISE_ADDR ? { advertiseAddr: env.DSV3_ADVERTISE_ADDR } : {}),
    });
    // Rank 0 keeps the store up until every rank has connected its mesh.
    await store.add('dsv3/connected', 1);
    if (server)
      while ((await store.add('dsv3/connected', 0)) < le.worldSize) await new Promise((r) => setTimeout(r, 20));
    return t;
  } finally {
    store.close();
    await server?.close();
  }
}

/** Under dsv3-run, a rank exits when its launcher is gone (so no rank outlives a killed job). */
function watchLauncher(env: Record<string, string | undefined>): void {
  const launcher = Number(env.DSV3_LAUNCHER_PID);
  if (!launcher || process.ppid !== launcher) return;
  setInterval(() => {
    if (process.ppid !== launcher) {
      console.error(`[dsv3] the launcher (pid ${launcher}) is gone; rank exiting`);
      process.exit(1);
    }
  }, 500).unref();
}

/** Hands a value back to launchLocal() (in a local worker thread; elsewhere a no-op returning false). */
export function reportResult(value: unknown): boolean {
  if (!localWorker() || !parentPort) return false;
  parentPort.postMessage({ dsv3Result: value });
  return true;
}
