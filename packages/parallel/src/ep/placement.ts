// Where each routed expert runs: physical expert slots spread evenly over the EP ranks, each slot a
// copy of one logical expert. Without redundancy the E experts are contiguous (rank r owns experts
// [r·E/P, (r+1)·E/P)); with EPLB, hot experts get extra replicas and slots are packed by load.
import { rebalanceExperts } from '@dsv3/moe';

export interface ExpertPlacement {
  numExperts: number;
  ranks: number;
  /** Physical slot → logical expert (slots [r·S/P, (r+1)·S/P) live on rank r). */
  physToLogical: number[];
  /** Physical slot → EP rank. */
  physRank: number[];
  /** Logical expert → its physical slots. */
  replicas: number[][];
}

function fromSlots(numExperts: number, ranks: number, physToLogical: number[]): ExpertPlacement {
  const perRank = physToLogical.length / ranks;
  const replicas = Array.from({ length: numExperts }, () => [] as number[]);
  physToLogical.forEach((e, s) => replicas[e]!.push(s));
  const missing = replicas.findIndex((r) => r.length === 0);
  if (missing >= 0) throw new Error(`expert placement: logical expert ${missing} has no physical slot`);
  return { numExperts, ranks, physToLogical, physRank: physToLogical.map((_, s) => Math.floor(s / perRank)), replicas };
}

/** Experts split into P contiguous equal blocks (the layout without redundant experts). */
export function contiguousPlacement(numExperts: number, ranks: number): ExpertPlacement {
  if (!Number.isInteger(ranks) || ranks < 1)
    throw new RangeError(`expert placement: ranks must be a positive integer, got ${ranks}`);
  if (numExperts % ranks !== 0)
    throw new Error(`expert parallelism: ${ranks} EP ranks must divide the ${numExperts} routed experts`);
  return fromSlots(
    numExperts,
    ranks,
    Array.from({ length: numExperts }, (_, e) => e),
  );
}

export interface EplbPlacementOptions {
  /** Extra physical slots for hot experts (a multiple of the EP ranks; V3 prefilling: 32). */
  redundant: number;
  /** Expert groups of the gate (n_group) and nodes of the EP group: EPLB's hierarchical policy keeps groups on nodes. */
  groups?: number;
  nodes?: number;
}

/** EPLB's placement for observed per-expert loads (one layer). */
export function eplbPlacement(load: ArrayLike<number>, ranks: number, o: EplbPlacementOptions): ExpertPlacement {
  const E = load.length;
  if (!Number.isInteger(o.redundant) || o.redundant < 0 || o.redundant % ranks !== 0)
    throw new Error(
      `expert placement: redundant experts (${o.redundant}) must be a non-negative multiple of the ${ranks} EP ranks`,
    );
  const r = rebalanceExperts([Float64Array.from(load)], E + o.redundant, o.groups ?? 1, o.nodes ?? 1, ranks);
  return fromSlots(E, ranks, r.phy2log[0]!);
}

/** The physical slot serving (token t, slot j) of logical expert e: replicas take tokens in turn. */
export function chooseReplica(p: ExpertPlacement, e: number, t: number, j: number): number {
  const reps = p.replicas[e]!;
  return reps.length === 1 ? reps[0]! : reps[(t + j) % reps.length]!;
}
