// Errors that name who failed and during what: "rank 5 closed during ALLREDUCE #17 (group 0)".

/** Operation names as they appear in errors and in Work handles. */
export type OpName =
  | 'ALLREDUCE'
  | 'REDUCE_SCATTER'
  | 'ALLGATHER'
  | 'ALLTOALL'
  | 'BROADCAST'
  | 'SEND'
  | 'RECV'
  | 'BARRIER';

export const OP_CODES: Record<OpName, number> = {
  ALLREDUCE: 1,
  REDUCE_SCATTER: 2,
  ALLGATHER: 3,
  ALLTOALL: 4,
  BROADCAST: 5,
  SEND: 6,
  RECV: 6, // a SEND on one side matches a RECV on the other
  BARRIER: 7,
};

export function opNameOf(code: number): string {
  if (code === 6) return 'SEND/RECV';
  const hit = (Object.keys(OP_CODES) as OpName[]).find((k) => OP_CODES[k] === code);
  return hit ?? `op#${code}`;
}

/** A peer is gone (its connection closed, its thread or process exited) or the group was aborted. */
export class PeerFailure extends Error {
  constructor(
    /** The global rank that failed, or -1 when the failure is not tied to one peer (an abort). */
    readonly peer: number,
    readonly reason: string,
  ) {
    super(peer >= 0 ? `rank ${peer} ${reason}` : reason);
    this.name = 'PeerFailure';
  }
}

/** A collective or point-to-point operation failed on this rank. */
export class CollectiveError extends Error {
  constructor(
    message: string,
    readonly op: OpName,
    readonly seq: number,
    /** The global rank blamed for the failure, when one is known. */
    readonly peer: number | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CollectiveError';
  }
}

/** A collective that did not finish in time: names the ranks this rank was still waiting for. */
export class CollectiveTimeoutError extends CollectiveError {
  constructor(message: string, op: OpName, seq: number, peer: number | undefined) {
    super(message, op, seq, peer);
    this.name = 'CollectiveTimeoutError';
  }
}
