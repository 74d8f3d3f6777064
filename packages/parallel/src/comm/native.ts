// Collectives a transport can run itself on host buffers (MPI's tuned ones). Buffers are the
// dtype's working arrays; results are written in place or returned.
import type { ReduceOp } from './reduce.js';

export type NativeDType = 'f32' | 'f64' | 'i32' | 'u32' | 'u8';

export interface NativeCollectives {
  /** A communicator over these global ranks, or null on ranks outside it. Called by every rank, in order. */
  split(groupId: number, ranks: readonly number[]): Promise<NativeComm | null>;
  world(): NativeComm;
}

export interface NativeComm {
  allReduce(buf: ArrayBufferView, dtype: NativeDType, op: Exclude<ReduceOp, 'avg'>): Promise<void>;
  reduceScatter(input: ArrayBufferView, output: ArrayBufferView, dtype: NativeDType, op: Exclude<ReduceOp, 'avg'>): Promise<void>;
  allGather(input: Uint8Array, output: Uint8Array): Promise<void>;
  allToAll(input: Uint8Array, sendBytes: number[], output: Uint8Array, recvBytes: number[]): Promise<void>;
  broadcast(buf: Uint8Array, root: number): Promise<void>;
  send(buf: Uint8Array, peer: number, tag: number): Promise<void>;
  recv(buf: Uint8Array, peer: number, tag: number): Promise<void>;
  barrier(): Promise<void>;
}
