// The point-to-point interface pipeline execution runs over, and an in-memory implementation of it
// for running every rank of a pipeline inside one process (tests, simulation of a layout).
import type { Tensor } from '@dsv3/core';

/** Messages between two ranks arrive in the order they were sent (as MPI/NCCL point-to-point). */
export interface PointToPoint {
  readonly rank: number;
  readonly size: number;
  send(tensor: Tensor, toRank: number): Promise<void>;
  recv(fromRank: number): Promise<Tensor>;
}

/** `size` connected endpoints; endpoint r is rank r. A receive waits until its message is sent. */
export function inMemoryChannels(size: number): PointToPoint[] {
  if (!Number.isInteger(size) || size < 1)
    throw new RangeError(`inMemoryChannels: size must be a positive integer, got ${size}`);
  const queues = new Map<string, Tensor[]>();
  const waiting = new Map<string, ((t: Tensor) => void)[]>();
  const check = (what: string, self: number, peer: number): void => {
    if (!Number.isInteger(peer) || peer < 0 || peer >= size)
      throw new RangeError(`rank ${self}: ${what} rank ${peer} is outside 0..${size - 1}`);
    if (peer === self) throw new RangeError(`rank ${self}: ${what} itself`);
  };
  return Array.from({ length: size }, (_, rank) => ({
    rank,
    size,
    async send(tensor: Tensor, toRank: number): Promise<void> {
      check('send to', rank, toRank);
      const k = `${rank}>${toRank}`;
      const w = waiting.get(k);
      if (w?.length) w.shift()!(tensor);
      else (queues.get(k) ?? queues.set(k, []).get(k)!).push(tensor);
    },
    recv(fromRank: number): Promise<Tensor> {
      check('receive from', rank, fromRank);
      const k = `${fromRank}>${rank}`;
      const q = queues.get(k);
      if (q?.length) return Promise.resolve(q.shift()!);
      return new Promise((resolve) => (waiting.get(k) ?? waiting.set(k, []).get(k)!).push(resolve));
    },
  }));
}
