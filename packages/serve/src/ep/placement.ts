// Where each expert of each MoE layer runs in an expert-parallel group: physical slots, `slotsPerRank`
// on every rank, hold logical experts; a hot expert may hold several slots (redundant copies). The
// logical experts are the routed ones plus the shared expert as one more (index nRoutedExperts), which
// every token selects, as V3's decode treats it. Placements come from @dsv3/moe's EPLB over load.
import { rebalanceExperts } from '@dsv3/moe';

export interface ExpertPlacement {
  ranks: number;
  slotsPerRank: number;
  /** [layers][logical expert] ranks holding a copy (ascending, no repeats) */
  replicas: number[][][];
}

/** One copy of each logical expert, dealt round-robin over the ranks (no load information yet). */
export function roundRobinPlacement(layers: number, logicalExperts: number, ranks: number): ExpertPlacement {
  const replicas = Array.from({ length: layers }, () => Array.from({ length: logicalExperts }, (_, e) => [e % ranks]));
  return { ranks, slotsPerRank: Math.ceil(logicalExperts / ranks), replicas };
}

/**
 * EPLB placement for measured loads ([layers][logical experts], e.g. tokens routed since the last
 * placement) with `slotsPerRank` slots per rank (ranks × slotsPerRank ≥ experts; the surplus are
 * redundant copies of the hottest experts).
 */
export function eplbPlacement(
  load: readonly (readonly number[])[],
  ranks: number,
  slotsPerRank: number,
): ExpertPlacement {
  const E = load[0]?.length ?? 0;
  if (ranks * slotsPerRank < E) throw new RangeError(`${ranks} ranks × ${slotsPerRank} slots cannot hold ${E} experts`);
  const r = rebalanceExperts(load, ranks * slotsPerRank, 1, 1, ranks);
  const replicas = r.phy2log.map((p2l) => {
    const sets = Array.from({ length: E }, () => new Set<number>());
    p2l.forEach((e, slot) => sets[e]!.add(Math.floor(slot / slotsPerRank)));
    return sets.map((s) => [...s].sort((a, b) => a - b));
  });
  return { ranks, slotsPerRank, replicas };
}

/**
 * Tokens each rank computes under a placement, when each token goes to a copy on its own rank if
 * there is one and otherwise splits evenly over the copies: `routed[l][src][e]` counts tokens of rank
 * src routed to expert e in layer l. Returns [layers][ranks].
 */
export function rankLoads(routed: readonly (readonly (readonly number[])[])[], p: ExpertPlacement): number[][] {
  return routed.map((perSrc, l) => {
    const out = new Array<number>(p.ranks).fill(0);
    perSrc.forEach((row, src) =>
      row.forEach((n, e) => {
        const reps = p.replicas[l]![e]!;
        if (reps.includes(src)) out[src]! += n;
        else for (const r of reps) out[r]! += n / reps.length;
      }),
    );
    return out;
  });
}

/** max / mean of per-rank loads, averaged over layers (1 = perfectly balanced). */
export function imbalance(loads: readonly (readonly number[])[]): number {
  let s = 0;
  for (const row of loads) {
    const mean = row.reduce((a, b) => a + b, 0) / row.length;
    s += mean > 0 ? Math.max(...row) / mean : 1;
  }
  return s / Math.max(1, loads.length);
}
