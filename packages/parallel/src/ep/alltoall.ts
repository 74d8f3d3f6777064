// The uneven all-to-all of token rows as a differentiable, awaitable op: the forward sends rows
// [Σ splits[<j], +splits[j]) to rank j, the backward sends the gradients back the same way reversed.
// Payload precision per direction, as V3: dispatch rows as FP8 E4M3 with one f32 scale per 1x128 tile,
// combine rows (and every gradient) as BF16; 'native' sends the tensor's own dtype (exact).
import { cast, fromRaw, noGrad, type Tensor } from '@dsv3/core';
import { dequantizeActivation, quantizeActivation } from '@dsv3/fp8';
import type { ProcessGroup } from '../comm/group.js';
import { recordAsync } from './autograd.js';
import { streamAllToAll } from './streams.js';

export type WirePrecision = 'native' | 'bf16' | 'fp8';

export interface RowExchange {
  /** Rows sent to each group rank, in rank order (sums to the input's rows). */
  sendSplits: readonly number[];
  /** Rows received from each rank; exchanged first when not given. */
  recvSplits?: readonly number[];
  /** Forward payload precision (default native). */
  wire?: WirePrecision;
  /** Precision of the gradients sent back in backward (default native; 'fp8' is not allowed). */
  gradWire?: Exclude<WirePrecision, 'fp8'>;
  /** Counts bytes put on the wire (forward and backward) by this rank, per destination group rank. */
  traffic?: Float64Array;
  /** Where in `traffic` each group rank counts (default: its group rank). */
  trafficRanks?: readonly number[];
  /** Name in error messages and the graph. */
  name?: string;
}

export interface ExchangeResult {
  rows: Tensor;
  recvSplits: number[];
}

/** Sends rows of a 2-D tensor with the given per-row precision; returns the received rows in x's dtype. */
async function exchange(
  group: ProcessGroup,
  x: Tensor,
  send: readonly number[],
  recv: readonly number[] | undefined,
  wire: WirePrecision,
  traffic?: Tally,
): Promise<ExchangeResult> {
  const [, H] = x.shape as [number, number];
  if (wire === 'fp8') {
    const data = (await x.data()) as Float32Array | Float64Array;
    const qz = quantizeActivation(data instanceof Float32Array ? data : Float32Array.from(data), x.shape);
    const nb = qz.scaleShape[1]!;
    const q = fromRaw('fp8-e4m3', qz.shape, qz.q, x.backend);
    const s = fromRaw('f32', qz.scaleShape, qz.scales, x.backend);
    const got = await streamAllToAll(group, q, send, recv);
    const sw = await streamAllToAll(group, s, send, got.outputSplits);
    count(traffic, send, H + 4 * nb, group.rank);
    const rows = got.outputSplits.reduce((a, b) => a + b, 0);
    const deq = dequantizeActivation((await got.output.raw()) as Uint8Array, (await sw.output.raw()) as Float32Array, [
      rows,
      H,
    ]);
    const out = fromRaw('f32', [rows, H], deq, x.backend);
    return { rows: x.dtype === 'f32' ? out : noGrad(() => cast(out, x.dtype)), recvSplits: got.outputSplits };
  }
  const payload = wire === 'bf16' && x.dtype !== 'bf16' ? noGrad(() => cast(x, 'bf16')) : x;
  const r = await streamAllToAll(group, payload, send, recv);
  count(traffic, send, H * bytesOf(payload.dtype), group.rank);
  const rows = r.output.dtype === x.dtype ? r.output : noGrad(() => cast(r.output, x.dtype));
  return { rows, recvSplits: r.outputSplits };
}

function bytesOf(dtype: string): number {
  return dtype === 'f64'
    ? 8
    : dtype === 'bf16' || dtype === 'f16'
      ? 2
      : dtype.startsWith('fp8') || dtype === 'u8'
        ? 1
        : 4;
}

/** Where the bytes sent are counted: `at[j]` for group rank j (default j). */
interface Tally {
  bytes: Float64Array;
  at?: readonly number[];
}

function count(traffic: Tally | undefined, send: readonly number[], rowBytes: number, self: number): void {
  if (!traffic) return;
  send.forEach((n, j) => {
    if (j !== self) traffic.bytes[traffic.at?.[j] ?? j]! += n * rowBytes;
  });
}

/**
 * Differentiable uneven all-to-all of x [N, H] over `group` (every member calls it, in the same order;
 * in communication stream 1, forward or backward, it runs on the group's twin: see ./streams.ts).
 * Gradients reaching the output travel back to the senders in backwardAsync (see ./autograd.ts).
 */
export async function allToAllRows(group: ProcessGroup, x: Tensor, o: RowExchange): Promise<ExchangeResult> {
  const name = o.name ?? 'allToAllRows';
  if (x.ndim !== 2) throw new Error(`${name}: expected rows [N, H], got shape [${x.shape.join(', ')}]`);
  if (o.gradWire === ('fp8' as WirePrecision)) throw new Error(`${name}: gradients travel as native or bf16, not fp8`);
  const tally = o.traffic && { bytes: o.traffic, ...(o.trafficRanks && { at: o.trafficRanks }) };
  const fwd = await exchange(group, x, o.sendSplits, o.recvSplits, o.wire ?? 'native', tally);
  const sendSplits = [...o.sendSplits];
  const rows = recordAsync(fwd.rows, name, [x], async (g) => {
    const back = await exchange(group, g, fwd.recvSplits, sendSplits, o.gradWire ?? 'native', tally);
    return [back.rows];
  });
  return { rows, recvSplits: fwd.recvSplits };
}
