// The pipeline's point-to-point over a ProcessGroup (any transport: local threads, TCP, MPI). A
// ProcessGroup receive needs the message's shape up front and pipeline messages are ragged, so each
// tensor travels as a small header (dtype, rank, shape) followed by its data, both on one tag.
import { DTYPES, full, type Tensor } from '@dsv3/core';
import type { ProcessGroup } from '../comm/group.js';
import type { PointToPoint } from './channels.js';

/** Tag of pipeline messages (kept apart from other point-to-point traffic of the group). */
export const PIPELINE_TAG = 0x5049;
const MAX_NDIM = 8;

export function groupPointToPoint(group: ProcessGroup, tag = PIPELINE_TAG): PointToPoint {
  // Receives from one peer must run one after another (header, then its data).
  const chains = new Map<number, Promise<unknown>>();
  return {
    rank: group.rank,
    size: group.size,
    async send(t: Tensor, toRank: number): Promise<void> {
      if (t.ndim > MAX_NDIM)
        throw new RangeError(`pipeline send: tensors of up to ${MAX_NDIM} dimensions, got ${t.ndim}`);
      const header = new Int32Array(2 + MAX_NDIM);
      header[0] = DTYPES.indexOf(t.dtype);
      header[1] = t.ndim;
      t.shape.forEach((d, i) => (header[2 + i] = d));
      // Both sends are numbered now, in this order, so concurrent sends to one peer never interleave.
      const head = group.send(header, toRank, tag);
      const body = group.send(t, toRank, tag);
      await head.wait();
      await body.wait();
    },
    recv(fromRank: number): Promise<Tensor> {
      const run = async (): Promise<Tensor> => {
        const header = await group.recv(new Int32Array(2 + MAX_NDIM), fromRank, tag).wait();
        const dtype = DTYPES[header[0]!];
        const ndim = header[1]!;
        if (!dtype || ndim < 0 || ndim > MAX_NDIM)
          throw new Error(`pipeline recv from rank ${fromRank}: malformed header [${[...header].join(', ')}]`);
        const shape = [...header.subarray(2, 2 + ndim)];
        return group.recv(full(shape, 0, { dtype }), fromRank, tag).wait();
      };
      const next = (chains.get(fromRank) ?? Promise.resolve()).then(run, run);
      chains.set(
        fromRank,
        next.catch(() => undefined),
      );
      return next;
    },
  };
}
