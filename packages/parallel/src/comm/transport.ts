// One interface for every transport: tagged point-to-point messages between global ranks, with
// failures surfaced as PeerFailure. The collective algorithms (algorithms.ts) run on top of it;
// a transport with tuned collectives of its own (MPI) also offers `native`.
import { PeerFailure } from './errors.js';
import { Mailbox, encodeHeader, type Tag } from './wire.js';
import type { NativeCollectives } from './native.js';
import type { ShmGroup } from './shm.js';

export type TransportKind = 'local' | 'tcp' | 'mpi';

export interface Transport {
  readonly kind: TransportKind;
  readonly rank: number;
  readonly size: number;
  /** Resolves once `data` may be reused. */
  send(peer: number, tag: Tag, data: Uint8Array): Promise<void>;
  /** Resolves with the message; `into` (if given) must match the sent length exactly. */
  recv(peer: number, tag: Tag, into?: Uint8Array): Promise<Uint8Array>;
  /** Global ranks this rank is still waiting for in one operation (for timeout reports). */
  waitingOn(group: number, kind: number, seq: number): number[];
  /** Records that this rank entered world collective `seq` (where peers can see it cheaply). */
  markEntered?(seq: number): void;
  /** World ranks that have not entered world collective `seq` yet. */
  ranksBehind?(seq: number): number[];
  /** The failure that broke this transport, if any. */
  readonly failure: PeerFailure | null;
  /** Breaks the transport: every pending and later operation fails with `reason`, peers see us close. */
  abort(reason: PeerFailure): void;
  /** Collectives the transport implements itself (MPI); undefined where algorithms.ts runs them. */
  readonly native?: NativeCollectives;
  /** All-reduce and all-to-all through memory the ranks share (local), for group `id`; null where the
   *  group cannot have them, and then algorithms.ts runs them. */
  sharedMemory?(id: number, ranks: readonly number[]): ShmGroup | null;
  /** How this rank reads from each world rank, where the transport has a choice (tcp: 'unix' or
   *  'tcp'; null for itself). */
  links?(): readonly (string | null)[];
  close(): Promise<void>;
}

/** Shared logic of byte-stream transports: a mailbox for receives, framed sends per link. */
export abstract class StreamTransport implements Transport {
  abstract readonly kind: TransportKind;
  protected readonly mailbox = new Mailbox();

  constructor(
    readonly rank: number,
    readonly size: number,
  ) {}

  get failure(): PeerFailure | null {
    return this.mailbox.failure;
  }

  protected checkPeer(peer: number): void {
    if (!Number.isInteger(peer) || peer < 0 || peer >= this.size || peer === this.rank)
      throw new RangeError(
        `peer rank ${peer} is not another rank of this ${this.size}-rank job (this is rank ${this.rank})`,
      );
  }

  send(peer: number, tag: Tag, data: Uint8Array): Promise<void> {
    this.checkPeer(peer);
    if (this.failure) return Promise.reject(this.failure);
    return this.write(peer, encodeHeader(tag, data.byteLength), data);
  }

  recv(peer: number, tag: Tag, into?: Uint8Array): Promise<Uint8Array> {
    this.checkPeer(peer);
    return this.mailbox.recv(peer, tag, into);
  }

  waitingOn(group: number, kind: number, seq: number): number[] {
    return this.mailbox.waitingOn(group, kind, seq);
  }

  abort(reason: PeerFailure): void {
    if (this.failure) return;
    this.mailbox.fail(reason);
    this.shutdown(true);
  }

  async close(): Promise<void> {
    this.mailbox.fail(new PeerFailure(-1, 'the process group was destroyed'));
    await this.shutdown(false);
  }

  /** Writes header then payload on the link to `peer`, in order with earlier writes. */
  protected abstract write(peer: number, header: Uint8Array, payload: Uint8Array): Promise<void>;
  /** Releases the links; `failed` tells peers this rank broke off rather than finished. */
  protected abstract shutdown(failed: boolean): Promise<void>;
}
