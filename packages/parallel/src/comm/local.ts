// The `local` transport: ranks are worker threads of one process. Each ordered pair of ranks has a
// single-producer / single-consumer byte ring in a SharedArrayBuffer; the sender copies a message
// into the ring, the receiver's mailbox copies it straight into the destination buffer. Waiting
// uses Atomics.waitAsync, so a rank's thread stays free to compute while its data moves.
// All-reduce and all-to-all bypass the rings: they read peers' staging areas in place (shm.ts).
import { PeerFailure } from './errors.js';
import {
  createShmFabric,
  defaultPieceBytes,
  SHM_SLOTS,
  ShmGroup,
  wakeAll,
  type ShmFabric,
  type ShmHost,
} from './shm.js';
import { KIND_COLLECTIVE, StreamParser } from './wire.js';
import { StreamTransport } from './transport.js';

/** The shared memory of one local job, created by the launcher and handed to every worker. */
export interface LocalFabric {
  size: number;
  channelBytes: number;
  /** Per channel (src * size + dst) a 16-int32 block: HEAD, TAIL, CLOSED (see below). */
  control: SharedArrayBuffer;
  data: SharedArrayBuffer;
  /** Per rank: 0 running, 1 closed its group, 2 failed (thread exited), 3 aborted; then per rank the
   *  exit code; then per rank the last world collective it entered (for timeout reports). */
  state: SharedArrayBuffer;
  /** Staging areas of the shared-memory all-reduce and all-to-all (null: they run over the rings). */
  shm: ShmFabric | null;
}

const STRIDE = 16; // int32s per channel control block (64 bytes, so channels do not share a cache line)
const HEAD = 0;
const TAIL = 1;
const CLOSED = 2;
export const RANK_RUNNING = 0;
export const RANK_CLOSED = 1;
export const RANK_FAILED = 2;
export const RANK_ABORTED = 3;

export function createLocalFabric(
  size: number,
  channelBytes: number,
  pieceBytes: number = defaultPieceBytes(size),
): LocalFabric {
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`a local job needs at least one rank, got ${size}`);
  if (!Number.isInteger(Math.log2(channelBytes)) || channelBytes < 4096)
    throw new RangeError(`channelBytes must be a power of two of at least 4096, got ${channelBytes}`);
  return {
    size,
    channelBytes,
    control: new SharedArrayBuffer(size * size * STRIDE * 4),
    data: new SharedArrayBuffer(size * size * channelBytes),
    state: new SharedArrayBuffer(size * 3 * 4),
    shm: pieceBytes > 0 ? createShmFabric(size, pieceBytes) : null,
  };
}

/** Default ring size per ordered pair: larger rings mean fewer hand-offs between threads (each costs a
 *  wake-up), bounded so the job's rings stay near 100 MiB (2 ranks: 2 x 16 MiB; 4: 12 x 8 MiB; 8: 56 x 2 MiB). */
export function defaultChannelBytes(size: number): number {
  return size <= 2 ? 16 << 20 : size <= 4 ? 8 << 20 : size <= 8 ? 2 << 20 : 1 << 20;
}

type WaitAsync = (
  a: Int32Array,
  i: number,
  v: number,
  t?: number,
) => { async: boolean; value: Promise<string> | string };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

function waitChange(ctrl: Int32Array, index: number, seen: number): Promise<unknown> | null {
  const r = waitAsync(ctrl, index, seen);
  return r.async ? (r.value as Promise<string>) : null;
}

/** Marks a rank as gone and wakes every thread waiting on its channels (the launcher calls this). */
export function markRankDown(f: LocalFabric, rank: number, state: number, exitCode: number): void {
  const st = new Int32Array(f.state);
  if (Atomics.load(st, rank) !== RANK_RUNNING) return;
  Atomics.store(st, f.size + rank, exitCode);
  Atomics.store(st, rank, state);
  const ctrl = new Int32Array(f.control);
  for (let other = 0; other < f.size; other++) {
    for (const c of [rank * f.size + other, other * f.size + rank]) {
      Atomics.store(ctrl, c * STRIDE + CLOSED, state);
      Atomics.notify(ctrl, c * STRIDE + HEAD);
      Atomics.notify(ctrl, c * STRIDE + TAIL);
    }
  }
  if (f.shm) wakeAll(f.shm);
}

export class LocalTransport extends StreamTransport {
  readonly kind = 'local' as const;
  private readonly ctrl: Int32Array;
  private readonly bytes: Uint8Array;
  private readonly st: Int32Array;
  private readonly cap: number;
  private readonly queues: Promise<void>[];
  private readonly shmGroups = new Map<number, ShmGroup>();
  private stopped = false;

  constructor(
    rank: number,
    private readonly fabric: LocalFabric,
  ) {
    super(rank, fabric.size);
    this.ctrl = new Int32Array(fabric.control);
    this.bytes = new Uint8Array(fabric.data);
    this.st = new Int32Array(fabric.state);
    this.cap = fabric.channelBytes;
    this.queues = Array.from({ length: fabric.size }, () => Promise.resolve());
    for (let peer = 0; peer < fabric.size; peer++) if (peer !== rank) void this.readLoop(peer);
  }

  private base(src: number, dst: number): number {
    return (src * this.size + dst) * STRIDE;
  }

  private peerFailure(peer: number): PeerFailure {
    const s = Atomics.load(this.st, peer);
    if (s === RANK_FAILED) {
      const code = Atomics.load(this.st, this.size + peer);
      return new PeerFailure(
        peer,
        `failed (its thread exited${code ? ` with code ${code}` : ' with an uncaught error'})`,
      );
    }
    if (s === RANK_ABORTED) return new PeerFailure(peer, 'aborted (an operation timed out or failed there)');
    return new PeerFailure(peer, 'closed its process group');
  }

  /** Shared-memory all-reduce / all-to-all for group `id` (null where the group has no staging slot). */
  sharedMemory(id: number, ranks: readonly number[]): ShmGroup | null {
    if (!this.fabric.shm || id >= SHM_SLOTS || ranks.length < 2) return null;
    const transport = this;
    const host: ShmHost = {
      get failure() {
        return transport.failure;
      },
      peerGone: (peer) => (Atomics.load(this.st, peer) === RANK_RUNNING ? null : this.peerFailure(peer)),
    };
    const g = new ShmGroup(this.fabric.shm, host, id, ranks, this.rank);
    this.shmGroups.set(id, g);
    return g;
  }

  override waitingOn(group: number, kind: number, seq: number): number[] {
    const fromRings = super.waitingOn(group, kind, seq);
    const fromShm = kind === KIND_COLLECTIVE ? (this.shmGroups.get(group)?.waitingOn(seq) ?? []) : [];
    return [...new Set([...fromRings, ...fromShm])].sort((a, b) => a - b);
  }

  markEntered(seq: number): void {
    Atomics.store(this.st, 2 * this.size + this.rank, seq);
  }

  ranksBehind(seq: number): number[] {
    const out: number[] = [];
    for (let r = 0; r < this.size; r++) if (Atomics.load(this.st, 2 * this.size + r) < seq) out.push(r);
    return out;
  }

  protected write(peer: number, header: Uint8Array, payload: Uint8Array): Promise<void> {
    const next = this.queues[peer]!.then(async () => {
      await this.writeBytes(peer, header);
      await this.writeBytes(peer, payload);
    });
    this.queues[peer] = next.catch(() => undefined);
    return next;
  }

  private async writeBytes(peer: number, src: Uint8Array): Promise<void> {
    const b = this.base(this.rank, peer);
    const off = (this.rank * this.size + peer) * this.cap;
    const mask = this.cap - 1;
    let done = 0;
    while (done < src.byteLength) {
      if (this.failure) throw this.failure;
      if (Atomics.load(this.ctrl, b + CLOSED) !== 0) throw this.peerFailure(peer);
      const head = Atomics.load(this.ctrl, b + HEAD);
      const tail = Atomics.load(this.ctrl, b + TAIL);
      const free = this.cap - ((head - tail) | 0);
      if (free === 0) {
        await waitChange(this.ctrl, b + TAIL, tail);
        continue;
      }
      const n = Math.min(free, src.byteLength - done);
      const at = head & mask;
      const first = Math.min(n, this.cap - at);
      this.bytes.set(src.subarray(done, done + first), off + at);
      if (first < n) this.bytes.set(src.subarray(done + first, done + n), off);
      done += n;
      Atomics.store(this.ctrl, b + HEAD, (head + n) | 0);
      Atomics.notify(this.ctrl, b + HEAD);
    }
  }

  private async readLoop(peer: number): Promise<void> {
    const b = this.base(peer, this.rank);
    const off = (peer * this.size + this.rank) * this.cap;
    const mask = this.cap - 1;
    const parser = new StreamParser(peer, this.mailbox);
    let tail = Atomics.load(this.ctrl, b + TAIL);
    while (!this.stopped) {
      const head = Atomics.load(this.ctrl, b + HEAD);
      const avail = (head - tail) | 0;
      if (avail > 0) {
        const at = tail & mask;
        const first = Math.min(avail, this.cap - at);
        parser.feed(this.bytes.subarray(off + at, off + at + first));
        if (first < avail) parser.feed(this.bytes.subarray(off, off + avail - first));
        tail = (tail + avail) | 0;
        Atomics.store(this.ctrl, b + TAIL, tail);
        Atomics.notify(this.ctrl, b + TAIL);
        continue;
      }
      const closed = Atomics.load(this.ctrl, b + CLOSED);
      if (closed !== 0) {
        const f = this.peerFailure(peer);
        if (closed !== RANK_CLOSED || !parser.idle) this.mailbox.fail(f);
        else this.mailbox.closePeer(f);
        return;
      }
      await waitChange(this.ctrl, b + HEAD, head);
    }
  }

  protected async shutdown(failed: boolean): Promise<void> {
    this.stopped = true;
    markRankDown(this.fabric, this.rank, failed ? RANK_ABORTED : RANK_CLOSED, 0);
  }
}
