// The two-hop (hierarchical) dispatch of V3's expert parallelism: a token crosses to another node
// once, to the rank with the sender's local index there (the "inter" group: one rank per node), even
// when several of its experts live on that node; that rank forwards one copy per (token, expert) pair
// to the owners within its node (the "intra" group). Combine retraces both hops in reverse. Node-limited
// routing (each token to at most M nodes) bounds the first hop to M copies of a token.
//
// EP rank = node · ranksPerNode + local index, so inter.rank is the node and intra.rank the local index.
import { indexSelect, tensor, type Tensor } from '@dsv3/core';
import type { ProcessGroup } from '../comm/group.js';
import { allToAllRows, type WirePrecision } from './alltoall.js';
import { streamAllToAll } from './streams.js';

export interface HierarchicalGroups {
  /** The EP ranks of this rank's node. */
  intra: ProcessGroup;
  /** The EP ranks with this rank's local index, one per node. */
  inter: ProcessGroup;
}

/** Dispatched rows at their owner, and how to send the owner's outputs back. */
export interface Dispatched {
  /** Logical expert of each received row. */
  ids: Int32Array;
  rows: Tensor;
  /** The owner's outputs (one per received row) back at their senders, one row per entry of `order`. */
  combine(y: Tensor): Promise<Tensor>;
  /** The (token·k + slot) pair of each row `combine` returns. */
  order: Int32Array;
}

export interface HopOptions {
  dispatchWire: WirePrecision;
  combineWire: Exclude<WirePrecision, 'fp8'>;
  /** Bytes sent, per EP rank (forward and backward). */
  traffic: Float64Array;
}

export function checkHierarchical(h: HierarchicalGroups, ep: ProcessGroup): void {
  if (h.intra.size * h.inter.size !== ep.size || ep.rank !== h.inter.rank * h.intra.size + h.intra.rank)
    throw new Error(
      `hierarchical dispatch: the intra-node (${h.intra.size} ranks) and inter-node (${h.inter.size} ranks) groups do not tile the ${ep.size}-rank EP group as node · ranksPerNode + local (EP rank ${ep.rank} is intra ${h.intra.rank}, inter ${h.inter.rank})`,
    );
}

/**
 * Two-hop dispatch of the (token, expert) pairs of x2 [T, H]: `pairs` (token·k + slot) ordered by
 * destination EP rank with `splits` rows per rank and `experts` their logical experts.
 */
export async function hierarchicalDispatch(
  h: HierarchicalGroups,
  x2: Tensor,
  route: { pairs: Int32Array; splits: readonly number[]; experts: Int32Array },
  k: number,
  o: HopOptions,
): Promise<Dispatched> {
  const rpn = h.intra.size;
  const nodes = h.inter.size;
  const be = x2.backend;
  // Hop 1 plan: per destination node, each token once, and per pair (row in the message, local rank, expert).
  const perNode = Array.from({ length: nodes }, () => [] as { p: number; local: number; expert: number }[]);
  let at = 0;
  route.splits.forEach((n, dest) => {
    for (let i = 0; i < n; i++, at++)
      perNode[Math.floor(dest / rpn)]!.push({ p: route.pairs[at]!, local: dest % rpn, expert: route.experts[at]! });
  });
  const tokensA: number[] = [];
  const order: number[] = [];
  const meta: number[] = [];
  const rowSplits: number[] = [];
  const metaSplits: number[] = [];
  for (const list of perNode) {
    list.sort((a, b) => a.p - b.p);
    let rows = 0;
    let last = -1;
    for (const { p, local, expert } of list) {
      const t = (p / k) | 0;
      if (t !== last) {
        tokensA.push(t);
        rows++;
        last = t;
      }
      order.push(p);
      meta.push(rows - 1, local, expert);
    }
    rowSplits.push(rows);
    metaSplits.push(3 * list.length);
  }
  const interRanks = Array.from({ length: nodes }, (_, n) => n * rpn + h.intra.rank);
  const intraRanks = Array.from({ length: rpn }, (_, l) => h.inter.rank * rpn + l);
  const gotMeta = await streamAllToAll(h.inter, Int32Array.from(meta), metaSplits);
  // Rows from each origin: one more than the last row index its pairs name.
  const recvRows: number[] = [];
  const pairsFrom: number[] = [];
  let m0 = 0;
  for (const len of gotMeta.outputSplits) {
    let rows = 0;
    for (let i = m0; i < m0 + len; i += 3) rows = Math.max(rows, gotMeta.output[i]! + 1);
    recvRows.push(rows);
    pairsFrom.push(len / 3);
    m0 += len;
  }
  const hop1 = await allToAllRows(
    h.inter,
    indexSelect(x2, tensor(Int32Array.from(tokensA), { dtype: 'i32', backend: be }), 0),
    {
      sendSplits: rowSplits,
      recvSplits: recvRows,
      wire: o.dispatchWire,
      gradWire: o.combineWire,
      traffic: o.traffic,
      trafficRanks: interRanks,
      name: 'ep.dispatch.interNode',
    },
  );

  // Hop 2 plan: the received pairs (origin by origin, in message order), stably sorted by local owner.
  const received: { row: number; local: number; expert: number }[] = [];
  let rowBase = 0;
  m0 = 0;
  gotMeta.outputSplits.forEach((len, origin) => {
    for (let i = m0; i < m0 + len; i += 3)
      received.push({
        row: rowBase + gotMeta.output[i]!,
        local: gotMeta.output[i + 1]!,
        expert: gotMeta.output[i + 2]!,
      });
    rowBase += recvRows[origin]!;
    m0 += len;
  });
  const sorted = received.map((_, q) => q).sort((a, b) => received[a]!.local - received[b]!.local || a - b);
  const splitsB = new Array<number>(rpn).fill(0);
  for (const q of received) splitsB[q.local]!++;
  const inverse = new Int32Array(sorted.length);
  sorted.forEach((q, pos) => (inverse[q] = pos));
  const ids = await streamAllToAll(
    h.intra,
    Int32Array.from(sorted, (q) => received[q]!.expert),
    splitsB,
  );
  const xsB = indexSelect(
    hop1.rows,
    tensor(
      Int32Array.from(sorted, (q) => received[q]!.row),
      { dtype: 'i32', backend: be },
    ),
    0,
  );
  const hop2 = await allToAllRows(h.intra, xsB, {
    sendSplits: splitsB,
    recvSplits: ids.outputSplits,
    wire: o.dispatchWire,
    gradWire: o.combineWire,
    traffic: o.traffic,
    trafficRanks: intraRanks,
    name: 'ep.dispatch.intraNode',
  });

  return {
    ids: ids.output,
    rows: hop2.rows,
    order: Int32Array.from(order),
    async combine(y: Tensor): Promise<Tensor> {
      const back2 = await allToAllRows(h.intra, y, {
        sendSplits: ids.outputSplits,
        recvSplits: splitsB,
        wire: o.combineWire,
        gradWire: o.combineWire,
        traffic: o.traffic,
        trafficRanks: intraRanks,
        name: 'ep.combine.intraNode',
      });
      // back in received order (origin by origin), then over the inter-node hop to the origins
      const backA = indexSelect(back2.rows, tensor(inverse, { dtype: 'i32', backend: be }), 0);
      const back1 = await allToAllRows(h.inter, backA, {
        sendSplits: pairsFrom,
        recvSplits: metaSplits.map((n) => n / 3),
        wire: o.combineWire,
        gradWire: o.combineWire,
        traffic: o.traffic,
        trafficRanks: interRanks,
        name: 'ep.combine.interNode',
      });
      return back1.rows;
    },
  };
}
