// initProcessGroup(): the world group of this job, from the environment its launcher set.
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { detectLaunchEnv, type LaunchEnv } from './env.js';
import { ProcessGroup, type GroupOptions } from './group.js';
import { LOCAL_WORKER_KEY, type LocalWorkerData } from './launch-local.js';
import { LocalTransport } from './local.js';
import { SoloTransport } from './solo.js';
import type { Transport, TransportKind } from './transport.js';

export interface InitOptions extends GroupOptions {
  /** Which transport to use; default: DSV3_TRANSPORT, else local in a local worker, else tcp. */
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
  if (local) return { launcher: 'dsv3-run', rank: local.rank, worldSize: local.fabric.size, localRank: local.rank, localWorldSize: local.fabric.size };
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
    if (requested && requested !== 'local') throw new Error(`this rank is a local worker thread; it can only use the local transport, not ${requested}`);
    transport = new LocalTransport(local.rank, local.fabric);
  } else {
    const le = detectLaunchEnv(env);
    if (requested === 'local') throw new Error('the local transport joins worker threads started by launchLocal() or dsv3-run --threads; this is not one');
    if (le.worldSize === 1 && requested === undefined) transport = new SoloTransport();
    else throw new Error(`transport ${requested ?? 'tcp'} is not available yet`);
  }
  return new ProcessGroup(transport, Array.from({ length: transport.size }, (_, i) => i), 0, options);
}

/** Hands a value back to launchLocal() (in a local worker thread; elsewhere a no-op returning false). */
export function reportResult(value: unknown): boolean {
  if (!localWorker() || !parentPort) return false;
  parentPort.postMessage({ dsv3Result: value });
  return true;
}
