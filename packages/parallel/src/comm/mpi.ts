// The `mpi` transport: the system MPI (OpenMPI) through the dsv3_mpi N-API addon, so a job under
// mpirun or Slurm uses MPI's own collectives and the cluster's fabric. Operations are MPI's
// non-blocking forms, started on this thread and polled to completion between event-loop turns.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PeerFailure } from './errors.js';
import type { NativeCollectives, NativeComm, NativeReduceOp } from './native.js';
import type { WorkArray } from './reduce.js';
import type { Transport } from './transport.js';
import type { Tag } from './wire.js';

interface MpiAddon {
  init(): { rank: number; size: number; library: string; tagUpperBound: number };
  commCreate(parent: number, ranks: Int32Array): number;
  /** 0: its standing request is busy with an earlier all-reduce; call again once that completes. */
  iallreduce(comm: number, buf: ArrayBufferView, dtype: string, op: string): number;
  ireduceScatter(comm: number, input: ArrayBufferView, output: ArrayBufferView, dtype: string, op: string): number;
  iallgather(comm: number, input: Uint8Array, output: Uint8Array): number;
  ialltoallv(
    comm: number,
    input: Uint8Array,
    sc: Int32Array,
    sd: Int32Array,
    output: Uint8Array,
    rc: Int32Array,
    rd: Int32Array,
  ): number;
  ibcast(comm: number, buf: Uint8Array, root: number): number;
  ibarrier(comm: number): number;
  isend(comm: number, buf: Uint8Array, peer: number, tag: number): number;
  irecv(comm: number, buf: Uint8Array, peer: number, tag: number): number;
  test(): [number, string, number][];
  pending(): number;
  finalize(): void;
  abort(code: number): void;
}

const packageRoot = (): string => {
  const here = dirname(fileURLToPath(import.meta.url));
  // src/comm (sources) or dist (built): the package root holds binding.gyp.
  for (const up of ['../..', '..', '../../..']) if (existsSync(join(here, up, 'binding.gyp'))) return resolve(here, up);
  throw new Error('@dsv3/parallel: cannot find the package root (binding.gyp) to locate the MPI addon');
};

let addon: MpiAddon | null = null;

/** Loads the addon, building it first where MPI is installed but the addon is not built yet. */
export function loadMpiAddon(): MpiAddon {
  if (addon) return addon;
  const root = packageRoot();
  const file = process.env.DSV3_MPI_ADDON ?? join(root, 'build', 'Release', 'dsv3_mpi.node');
  if (!existsSync(file)) {
    const r = spawnSync(process.execPath, [join(root, 'scripts', 'build-mpi.mjs')], { stdio: 'inherit' });
    if (r.status !== 0 || !existsSync(file))
      throw new Error(
        `the mpi transport needs the dsv3_mpi addon, which could not be built (is OpenMPI's mpicc installed? apt install openmpi-bin libopenmpi-dev)`,
      );
  }
  addon = createRequire(import.meta.url)(file) as MpiAddon;
  return addon;
}

/** True where the addon is built or can be built (mpicc exists). */
export function mpiAvailable(): boolean {
  try {
    const root = packageRoot();
    if (existsSync(join(root, 'build', 'Release', 'dsv3_mpi.node'))) return true;
  } catch {
    return false;
  }
  return spawnSync('mpicc', ['-showme:version'], { stdio: 'ignore' }).status === 0;
}

const nativeDType = (a: WorkArray): string =>
  a instanceof Float32Array ? 'f32' : a instanceof Float64Array ? 'f64' : a instanceof Int32Array ? 'i32' : 'u32';

export class MpiTransport implements Transport {
  readonly kind = 'mpi' as const;
  readonly rank: number;
  readonly size: number;
  readonly library: string;
  failure: PeerFailure | null = null;
  readonly native: NativeCollectives;
  private readonly waiters = new Map<
    number,
    { resolve: () => void; reject: (e: Error) => void; expectBytes?: number }
  >();
  private polling = false;
  private readonly deferred = new Map<number, { attempt: () => boolean; reject: (e: Error) => void }[]>();
  private readonly mpi: MpiAddon;

  constructor() {
    this.mpi = loadMpiAddon();
    const info = this.mpi.init();
    this.rank = info.rank;
    this.size = info.size;
    this.library = info.library;
    const comm = (handle: number): NativeComm => this.comm(handle);
    this.native = {
      world: () => comm(0),
      split: (ranks) => {
        const h = this.mpi.commCreate(0, Int32Array.from(ranks));
        return h < 0 ? null : comm(h);
      },
    };
  }

  private track(id: number, expectBytes?: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<void>((resolve, reject) => this.await(id, resolve, reject, expectBytes));
  }

  private await(id: number, resolve: () => void, reject: (e: Error) => void, expectBytes?: number): void {
    this.waiters.set(id, { resolve, reject, ...(expectBytes !== undefined ? { expectBytes } : {}) });
    if (!this.polling) {
      this.polling = true;
      setImmediate(() => this.poll());
    }
  }

  /** Starts a collective on communicator `h` in call order. `start` returns 0 when its standing
   *  request is still busy with an earlier all-reduce; it and every later collective on `h` then wait
   *  here, so each rank starts its collectives in the order it called them (MPI's rule). */
  private collective(h: number, start: () => number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<void>((resolve, reject) => {
      const attempt = (): boolean => {
        let id: number;
        try {
          id = start();
        } catch (e) {
          reject(e as Error);
          return true;
        }
        if (id === 0) return false;
        this.await(id, resolve, reject);
        return true;
      };
      const queue = this.deferred.get(h);
      if (queue?.length) queue.push({ attempt, reject });
      else if (!attempt()) this.deferred.set(h, [{ attempt, reject }]);
    });
  }

  private startDeferred(): void {
    for (const queue of this.deferred.values()) while (queue.length && queue[0]!.attempt()) queue.shift();
  }

  private poll(): void {
    for (const [id, err, bytes] of this.mpi.test()) {
      const w = this.waiters.get(id);
      if (!w) continue;
      this.waiters.delete(id);
      if (err) w.reject(new Error(`MPI: ${err}`));
      else if (w.expectBytes !== undefined && bytes !== w.expectBytes)
        w.reject(
          new Error(
            `the peer sent ${bytes} bytes; this rank expected ${w.expectBytes}: ranks disagree on the buffer size`,
          ),
        );
      else w.resolve();
    }
    if (!this.failure) this.startDeferred();
    if (this.waiters.size && !this.failure) setImmediate(() => this.poll());
    else this.polling = false;
  }

  private comm(h: number): NativeComm {
    const m = this.mpi;
    const offsetsToCounts = (offs: readonly number[]) => {
      const n = offs.length - 1;
      const counts = new Int32Array(n);
      const displs = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        if (offs[i + 1]! > 0x7fffffff) throw new RangeError('MPI all-to-all blocks are limited to 2 GiB');
        counts[i] = offs[i + 1]! - offs[i]!;
        displs[i] = offs[i]!;
      }
      return [counts, displs] as const;
    };
    return {
      allReduce: (buf, op: NativeReduceOp) => this.collective(h, () => m.iallreduce(h, buf, nativeDType(buf), op)),
      reduceScatter: (input, output, op) =>
        this.collective(h, () => m.ireduceScatter(h, input, output, nativeDType(input), op)),
      allGather: (input, output) => this.collective(h, () => m.iallgather(h, input, output)),
      allToAll: (input, so, output, ro) => {
        const [sc, sd] = offsetsToCounts(so);
        const [rc, rd] = offsetsToCounts(ro);
        return this.collective(h, () => m.ialltoallv(h, input, sc, sd, output, rc, rd));
      },
      broadcast: (buf, root) => this.collective(h, () => m.ibcast(h, buf, root)),
      send: (buf, peer, tag) => this.track(m.isend(h, buf, peer, tag)),
      recv: (buf, peer, tag) => this.track(m.irecv(h, buf, peer, tag), buf.byteLength),
      barrier: () => this.collective(h, () => m.ibarrier(h)),
    };
  }

  send(peer: number, tag: Tag, data: Uint8Array): Promise<void> {
    return this.track(this.mpi.isend(0, data, peer, tag.step));
  }
  async recv(peer: number, tag: Tag, into?: Uint8Array): Promise<Uint8Array> {
    if (!into) throw new Error('the mpi transport receives into a buffer of known size');
    await this.track(this.mpi.irecv(0, into, peer, tag.step), into.byteLength);
    return into;
  }
  waitingOn(): number[] {
    return [];
  }

  /** MPI cannot cancel a collective: fail every waiter, then take the whole job down (mpirun reports it). */
  abort(reason: PeerFailure): void {
    if (this.failure) return;
    this.failure = reason;
    for (const w of this.waiters.values()) w.reject(reason);
    this.waiters.clear();
    for (const queue of this.deferred.values()) for (const d of queue) d.reject(reason);
    this.deferred.clear();
    setTimeout(() => this.mpi.abort(1), 1000).unref();
  }

  async close(): Promise<void> {
    while (this.waiters.size || [...this.deferred.values()].some((q) => q.length))
      await new Promise((r) => setTimeout(r, 1));
    this.mpi.finalize();
  }
}
