// The pipeline executor's point-to-point interface over a ProcessGroup: each tensor goes as a small
// header (dtype, shape) on one tag and its data on another, so the receiver needs no shape up front.
import { allocStorageArray, DTYPES, fromRaw, type Tensor } from '@dsv3/core';
import type { PointToPoint, ProcessGroup } from '@dsv3/parallel';

const HEADER = 1;
const DATA = 2;
const MAX_DIMS = 8;

export function groupPointToPoint(pg: ProcessGroup): PointToPoint {
  return {
    rank: pg.rank,
    size: pg.size,
    async send(t: Tensor, to: number): Promise<void> {
      if (t.ndim > MAX_DIMS)
        throw new Error(`pipeline send: tensors of at most ${MAX_DIMS} dimensions, got [${t.shape.join(', ')}]`);
      const header = new Int32Array(2 + MAX_DIMS);
      header[0] = DTYPES.indexOf(t.dtype);
      header[1] = t.ndim;
      header.set(t.shape, 2);
      const raw = await t.raw();
      // Both sends are issued before either is awaited: their sequence numbers pair them on the receiver.
      const h = pg.send(header, to, HEADER);
      const d = pg.send(raw, to, DATA, { dtype: t.dtype });
      await Promise.all([h.wait(), d.wait()]);
    },
    async recv(from: number): Promise<Tensor> {
      const header = await pg.recv(new Int32Array(2 + MAX_DIMS), from, HEADER).wait();
      const dtype = DTYPES[header[0]!];
      if (!dtype) throw new Error(`pipeline recv: rank ${from} sent an unknown dtype code ${header[0]}`);
      const shape = Array.from(header.subarray(2, 2 + header[1]!));
      const data = await pg
        .recv(
          allocStorageArray(
            dtype,
            shape.reduce((a, b) => a * b, 1),
          ),
          from,
          DATA,
          { dtype },
        )
        .wait();
      return fromRaw(dtype, shape, data);
    },
  };
}
