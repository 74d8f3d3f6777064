// Expert parallelism for a @dsv3/moe MoE layer. The EP group's ranks each route their own tokens;
// dispatch sends every (token, expert) pair's row to the rank holding (a replica of) that expert in one
// uneven all-to-all, the owner runs its experts as grouped GEMMs, and combine sends the outputs back,
// where the gate weights scale and sum them per token. The shared expert is computed while dispatch is
// in flight. Both all-to-alls are differentiable (backward through backwardAsync()).
//
// A rank computes only the experts its placement gives it (runOwnedExperts) and reads no other expert's
// weights, so the trainer may release those (parameters sharded by expert). An expert's gradient is
// spread over the ranks holding a replica of it and the data-parallel copies; the distributed step
// sums it over exactly those holders.
import { cast, indexSelect, noGrad, reshape, tensor, full, type Tensor } from '@dsv3/core';
import { weightedScatterAdd, type MoE, type MoEForwardOptions, type MoEOutput } from '@dsv3/moe';
import type { ProcessGroup } from '../comm/group.js';
import { allToAllRows, type WirePrecision } from './alltoall.js';
import { checkHierarchical, hierarchicalDispatch, type Dispatched, type HierarchicalGroups } from './hierarchical.js';
import { ownedExperts, runOwnedExperts } from './owned.js';
import { streamAllToAll } from './streams.js';
import { chooseReplica, contiguousPlacement, type ExpertPlacement } from './placement.js';

export interface ExpertParallelOptions {
  /** Where experts run (default contiguous blocks). */
  placement?: ExpertPlacement;
  /** Dispatch payload precision (V3: 'fp8', E4M3 with 1x128 scales); default 'native' (exact). */
  dispatchWire?: WirePrecision;
  /** Combine payload (and every gradient) precision (V3: 'bf16'); default 'native'. */
  combineWire?: Exclude<WirePrecision, 'fp8'>;
  /** Compute the shared expert while dispatch is in flight (default true). */
  overlap?: boolean;
  /** EP ranks per node, for the node statistics (default: all on one node; the intra group's size when hierarchical). */
  ranksPerNode?: number;
  /**
   * Dispatch in two hops, across nodes to the same local rank then within the node (V3's path); the
   * groups tile the EP group as node · ranksPerNode + local. Default: one flat all-to-all.
   */
  hierarchical?: HierarchicalGroups;
}

/** What one rank's dispatches sent, summed over forwards (reset it as you like). */
export interface ExpertParallelStats {
  /** Rows (token, expert pairs) sent to each EP rank, this rank included. */
  rowsTo: Float64Array;
  /** Bytes this rank put on the wire to each other EP rank (forward and backward). */
  bytesTo: Float64Array;
  /** Most distinct nodes one token was sent to. */
  maxNodesPerToken: number;
  tokens: number;
  /** Milliseconds spent waiting for dispatch after the shared expert (0 when fully hidden). */
  dispatchWaitMs: number;
  /** Milliseconds waiting for combine. */
  combineWaitMs: number;
}

export interface ExpertParallelMoE {
  readonly moe: MoE;
  readonly group: ProcessGroup;
  readonly placement: ExpertPlacement;
  readonly stats: ExpertParallelStats;
  /** Restores the layer's single-process forward. */
  detach(): void;
}

const ATTACHED = Symbol('dsv3.expertParallel');

export function freshStats(ranks: number): ExpertParallelStats {
  return {
    rowsTo: new Float64Array(ranks),
    bytesTo: new Float64Array(ranks),
    maxNodesPerToken: 0,
    tokens: 0,
    dispatchWaitMs: 0,
    combineWaitMs: 0,
  };
}

/**
 * Makes `moe` expert-parallel over `group` (every member does this for the same layers in the same
 * order). Its forward then communicates: it runs through `runMoE(moe, x)` (the layer's `distributed`
 * forward); the in-process forward() throws.
 */
export function expertParallel(moe: MoE, group: ProcessGroup, o: ExpertParallelOptions = {}): ExpertParallelMoE {
  const m = moe as MoE & { [ATTACHED]?: ExpertParallelMoE };
  if (m[ATTACHED]) throw new Error('expertParallel: this MoE layer is already expert-parallel');
  const E = moe.config.nRoutedExperts;
  const placement = o.placement ?? contiguousPlacement(E, group.size);
  if (placement.numExperts !== E || placement.ranks !== group.size)
    throw new Error(
      `expertParallel: the placement is for ${placement.numExperts} experts on ${placement.ranks} ranks; the layer has ${E} experts, the group ${group.size} ranks`,
    );
  if (o.hierarchical) checkHierarchical(o.hierarchical, group);
  const ranksPerNode = o.ranksPerNode ?? o.hierarchical?.intra.size ?? group.size;
  if (!Number.isInteger(ranksPerNode) || ranksPerNode < 1 || group.size % ranksPerNode !== 0)
    throw new Error(`expertParallel: ranksPerNode (${ranksPerNode}) must divide the EP group size ${group.size}`);
  const stats = freshStats(group.size);
  const handle: ExpertParallelMoE = {
    moe,
    group,
    placement,
    stats,
    detach() {
      delete m[ATTACHED];
      moe.distributed = null;
    },
  };
  m[ATTACHED] = handle;
  const run = {
    group,
    placement,
    stats,
    ranksPerNode,
    dispatchWire: o.dispatchWire ?? 'native',
    combineWire: o.combineWire ?? 'native',
    overlap: o.overlap ?? true,
    owned: ownedExperts(placement, group.rank),
    hierarchical: o.hierarchical ?? null,
  } as const;
  moe.distributed = async (x: Tensor, opts: MoEForwardOptions) => (await epForward(moe, x, opts, run)).output;
  return handle;
}

interface Run {
  group: ProcessGroup;
  placement: ExpertPlacement;
  stats: ExpertParallelStats;
  ranksPerNode: number;
  dispatchWire: WirePrecision;
  combineWire: Exclude<WirePrecision, 'fp8'>;
  overlap: boolean;
  /** Logical experts with a slot on this rank. */
  owned: readonly number[];
  hierarchical: HierarchicalGroups | null;
}

/** Pairs ordered by destination rank (stable), with the per-rank counts. */
function route(indices: Int32Array, k: number, r: Run): { pairs: Int32Array; splits: number[]; experts: Int32Array } {
  const P = r.group.size;
  const n = indices.length;
  const dest = new Int32Array(n);
  const splits = new Array<number>(P).fill(0);
  for (let p = 0; p < n; p++) {
    const t = (p / k) | 0;
    const d = r.placement.physRank[chooseReplica(r.placement, indices[p]!, t, p % k)]!;
    dest[p] = d;
    splits[d]!++;
  }
  const cursor = [0];
  for (let d = 0; d < P; d++) cursor.push(cursor[d]! + splits[d]!);
  const pairs = new Int32Array(n);
  const experts = new Int32Array(n);
  for (let p = 0; p < n; p++) {
    const at = cursor[dest[p]!]!++;
    pairs[at] = p;
    experts[at] = indices[p]!;
  }
  // node statistics
  const T = n / k;
  for (let t = 0; t < T; t++) {
    const nodes = new Set<number>();
    for (let j = 0; j < k; j++) nodes.add(Math.floor(dest[t * k + j]! / r.ranksPerNode));
    if (nodes.size > r.stats.maxNodesPerToken) r.stats.maxNodesPerToken = nodes.size;
  }
  r.stats.tokens += T;
  splits.forEach((c, d) => (r.stats.rowsTo[d]! += c));
  return { pairs, splits, experts };
}

/** One all-to-all to the owners: expert ids first (this also exchanges the counts), then the rows. */
async function flatDispatch(
  x2: Tensor,
  { pairs, splits, experts }: { pairs: Int32Array; splits: number[]; experts: Int32Array },
  k: number,
  r: Run,
): Promise<Dispatched> {
  const tokIdx = tensor(
    Int32Array.from(pairs, (p) => (p / k) | 0),
    { dtype: 'i32', backend: x2.backend },
  );
  const xs = indexSelect(x2, tokIdx, 0); // [T·k, H] in destination order
  const ids = await streamAllToAll(r.group, experts, splits);
  const rows = await allToAllRows(r.group, xs, {
    sendSplits: splits,
    recvSplits: ids.outputSplits,
    wire: r.dispatchWire,
    gradWire: r.combineWire,
    traffic: r.stats.bytesTo,
    name: 'ep.dispatch',
  });
  return {
    ids: ids.output,
    rows: rows.rows,
    order: pairs,
    combine: async (y) =>
      (
        await allToAllRows(r.group, y, {
          sendSplits: rows.recvSplits,
          recvSplits: splits,
          wire: r.combineWire,
          gradWire: r.combineWire,
          traffic: r.stats.bytesTo,
          name: 'ep.combine',
        })
      ).rows,
  };
}

async function epForward(moe: MoE, x: Tensor, opts: MoEForwardOptions, r: Run): Promise<MoEOutput> {
  const H = moe.config.hiddenSize;
  if (x.ndim < 1 || x.shape[x.ndim - 1] !== H)
    throw new Error(
      `MoE: input has hidden size ${x.shape[x.ndim - 1] ?? 'none'} (shape [${x.shape.join(', ')}]), expected hidden_size ${H}`,
    );
  if (x.dtype !== moe.dtype) throw new TypeError(`MoE: input is ${x.dtype} but the experts are ${moe.dtype}`);
  const x2 = reshape(x, [-1, H]);
  const T = x2.shape[0]!;
  const gate = moe.gate.forward(x2, opts);
  const k = gate.k;
  // the all-to-all's split sizes are host numbers: read the routing here
  const routed = route((await gate.indices.data()) as Int32Array, k, r);
  const be = x2.backend;
  const dispatch = r.hierarchical
    ? hierarchicalDispatch(r.hierarchical, x2, routed, k, { ...r, traffic: r.stats.bytesTo })
    : flatDispatch(x2, routed, k, r);
  // The wait is what is left of dispatch after the shared expert (all of it without overlap).
  let t0 = performance.now();
  if (!r.overlap) await dispatch;
  const waitedBefore = performance.now() - t0;
  const shared = moe.sharedExperts ? moe.sharedExperts.forward(x2) : null;
  t0 = performance.now();
  const got = await dispatch;
  r.stats.dispatchWaitMs += waitedBefore + performance.now() - t0;

  // The owner's experts, one grouped GEMM per projection (combine weights are applied at home).
  const yOwn = runOwnedExperts(moe, r.owned, got.rows, got.ids);

  const t1 = performance.now();
  const back = await got.combine(yOwn);
  r.stats.combineWaitMs += performance.now() - t1;

  const tokIdx = tensor(
    Int32Array.from(got.order, (p) => (p / k) | 0),
    { dtype: 'i32', backend: be },
  );
  const w = cast(
    indexSelect(reshape(gate.weights, [-1]), tensor(got.order, { dtype: 'i32', backend: be }), 0),
    x2.dtype,
  );
  let out =
    T === 0
      ? noGrad(() => full([0, H], 0, { dtype: x2.dtype, backend: be }))
      : weightedScatterAdd(back, w, tokIdx, T, { impl: moe.impl });
  if (shared) out = out.add(shared);
  moe.lastRouting = gate;
  return { output: reshape(out, x.shape), routing: gate };
}
