// Collectives a transport runs itself on host buffers (MPI's tuned ones), used by ProcessGroup in
// place of algorithms.ts. Reductions take the dtype's working arrays and run in place.
import type { ReduceOp, WorkArray } from './reduce.js';

export type NativeReduceOp = Exclude<ReduceOp, 'avg'>;

export interface NativeCollectives {
  world(): NativeComm;
  /** A communicator over these world ranks, or null on ranks outside it. Every world rank calls it, in order. */
  split(ranks: readonly number[]): NativeComm | null;
}

export interface NativeComm {
  allReduce(buf: WorkArray, op: NativeReduceOp): Promise<void>;
  reduceScatter(input: WorkArray, output: WorkArray, op: NativeReduceOp): Promise<void>;
  allGather(input: Uint8Array, output: Uint8Array): Promise<void>;
  /** Byte offsets of each rank's block: send/recv offsets have size + 1 entries. */
  allToAll(
    input: Uint8Array,
    sendOffsets: readonly number[],
    output: Uint8Array,
    recvOffsets: readonly number[],
  ): Promise<void>;
  broadcast(buf: Uint8Array, root: number): Promise<void>;
  send(buf: Uint8Array, peer: number, tag: number): Promise<void>;
  recv(buf: Uint8Array, peer: number, tag: number): Promise<void>;
  barrier(): Promise<void>;
}
