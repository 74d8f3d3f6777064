// The runtime's parallel layout: a world of ranks arranged as tp × ep × dp × pp (innermost first,
// Megatron-style, so tensor- and expert-parallel peers are neighbours, i.e. on the same node when
// ranks fill nodes in order). Every rank of one pipeline stage runs the dense layers data-parallel
// over its dp·ep ranks ("dense DP"); routed experts are sharded over the ep ranks and replicated over dp
// ("expert DP"). ep is its own factor of the world (dp=2,pp=2,ep=2 is 8 ranks), here and in the
// planner's TrainLayout. With ranksPerNode, ranks fill nodes in order; an EP group spanning nodes is
// also split into its intra-node groups and its inter-node groups (one rank per node), the two hops of
// the hierarchical dispatch. This is the one place groups are laid out (Megatron's rank generator).
import type { GroupOptions, ProcessGroup } from '../comm/group.js';
import { setStreamTwin } from '../ep/streams.js';
import { dataParallelSize, parseParallel, worldSize, type LayoutDegrees } from '../plan/layout.js';

/** dp, pp, ep and tp (tensor parallelism: laid out and grouped, not yet used by the trainer). */
export type ParallelDims = LayoutDegrees;

/** A rank's position along each dimension. */
export interface RankCoords {
  tp: number;
  ep: number;
  dp: number;
  pp: number;
}

export type GroupKind = 'tp' | 'ep' | 'expertDp' | 'denseDp' | 'pp' | 'epIntra' | 'epInter';
/** Creation order of the groups (the same on every rank, as ProcessGroup.newGroup requires). */
export const GROUP_KINDS: readonly GroupKind[] = ['tp', 'ep', 'expertDp', 'denseDp', 'pp', 'epIntra', 'epInter'];

export class ParallelLayout {
  readonly dims: ParallelDims;
  readonly worldSize: number;
  /** World ranks per node (ranks fill nodes in order); the whole world by default. */
  readonly ranksPerNode: number;

  constructor(dims: Partial<ParallelDims>, opts: { ranksPerNode?: number } = {}) {
    const d = { dp: dims.dp ?? 1, pp: dims.pp ?? 1, ep: dims.ep ?? 1, tp: dims.tp ?? 1 };
    for (const [k, v] of Object.entries(d)) {
      if (!Number.isInteger(v) || v < 1)
        throw new RangeError(`parallel layout: ${k} must be a positive integer, got ${v}`);
    }
    this.dims = d;
    this.worldSize = worldSize(d);
    const rpn = opts.ranksPerNode ?? this.worldSize;
    if (!Number.isInteger(rpn) || rpn < 1 || this.worldSize % rpn !== 0)
      throw new RangeError(
        `parallel layout: ranks per node (${rpn}) must be a positive integer dividing the ${this.worldSize} ranks`,
      );
    const epSpan = d.tp * d.ep;
    if (rpn < epSpan && (rpn % d.tp !== 0 || epSpan % rpn !== 0))
      throw new RangeError(
        `parallel layout: an expert-parallel group (tp·ep = ${epSpan} consecutive ranks) must fill whole nodes of ${rpn} ranks, or fit in one`,
      );
    this.ranksPerNode = rpn;
  }

  /** EP ranks per node (the intra-node hop's size): ep when an EP group fits in one node. */
  get epRanksPerNode(): number {
    return Math.min(this.dims.ep, this.ranksPerNode / this.dims.tp);
  }

  /** Nodes an EP group spans (the inter-node hop's size). */
  get epNodes(): number {
    return this.dims.ep / this.epRanksPerNode;
  }

  /** "dp=2,pp=2,ep=2[,tp=1]" (dsv3-train's --parallel). */
  static parse(spec: string, opts: { ranksPerNode?: number } = {}): ParallelLayout {
    return new ParallelLayout(parseParallel(spec), opts);
  }

  toString(): string {
    const { dp, pp, ep, tp } = this.dims;
    return `dp=${dp},pp=${pp},ep=${ep}${tp > 1 ? `,tp=${tp}` : ''}`;
  }

  /** Fails clearly unless the job has exactly the ranks the layout needs. */
  checkWorld(size: number): void {
    if (size !== this.worldSize) {
      const { dp, pp, ep, tp } = this.dims;
      throw new Error(
        `parallel layout ${this} needs dp·pp·ep·tp = ${dp}·${pp}·${ep}·${tp} = ${this.worldSize} ranks, but the job has ${size}`,
      );
    }
  }

  coords(rank: number): RankCoords {
    if (!Number.isInteger(rank) || rank < 0 || rank >= this.worldSize)
      throw new RangeError(`rank ${rank} is outside the ${this.worldSize}-rank layout ${this}`);
    const { tp, ep, dp } = this.dims;
    return {
      tp: rank % tp,
      ep: Math.floor(rank / tp) % ep,
      dp: Math.floor(rank / (tp * ep)) % dp,
      pp: Math.floor(rank / (tp * ep * dp)),
    };
  }

  rankOf(c: RankCoords): number {
    const { tp, ep, dp } = this.dims;
    return c.tp + tp * (c.ep + ep * (c.dp + dp * c.pp));
  }

  /** Index of a rank among the dp·ep data-parallel ranks of its stage (which slice of the batch it reads). */
  dataRank(rank: number): number {
    const c = this.coords(rank);
    return c.ep + this.dims.ep * c.dp;
  }

  /** Data-parallel ranks of one stage (dp·ep): each reads its own slice of the batch. */
  get dataParallelSize(): number {
    return dataParallelSize(this.dims);
  }

  /**
   * Every group of a kind: a partition of the world into groups whose ranks differ only in the
   * coordinates the kind varies (the EP hops: the ep coordinate's node part, or its local part);
   * groups ordered by their first rank, each group's ranks ascending.
   */
  partition(kind: GroupKind): number[][] {
    const vary: (keyof RankCoords)[] =
      kind === 'tp'
        ? ['tp']
        : kind === 'expertDp'
          ? ['dp']
          : kind === 'denseDp'
            ? ['ep', 'dp']
            : kind === 'pp'
              ? ['pp']
              : ['ep'];
    const perNode = this.epRanksPerNode;
    const groups = new Map<string, number[]>();
    for (let r = 0; r < this.worldSize; r++) {
      const c = this.coords(r);
      const fixed = (Object.keys(c) as (keyof RankCoords)[]).filter((k) => !vary.includes(k)).map((k) => c[k]);
      // the part of ep a hop keeps fixed: its node (intra-node hop) or its local index (inter-node hop)
      if (kind === 'epIntra') fixed.push(Math.floor(c.ep / perNode));
      if (kind === 'epInter') fixed.push(c.ep % perNode);
      const key = fixed.join(',');
      (groups.get(key) ?? groups.set(key, []).get(key)!).push(r);
    }
    return [...groups.values()];
  }

  /** The ranks of `rank`'s group of a kind. */
  groupRanks(kind: GroupKind, rank: number): number[] {
    return this.partition(kind).find((g) => g.includes(rank))!;
  }
}

/** This rank's process groups of a layout. */
export type LayoutGroups = Record<GroupKind, ProcessGroup> & {
  world: ProcessGroup;
  layout: ParallelLayout;
  coords: RankCoords;
};

/**
 * Creates every group of the layout, in GROUP_KINDS order, on every rank (a collective over the world).
 * Each kind in `twins` gets a second group over the same ranks right after its own, which carries its
 * collectives in communication stream 1 (the backward half of DualPipe's overlapped FB pairs; see
 * ep/streams.ts). Created next to their originals, they take the next ids (the local transport gives
 * shared-memory collectives to the lowest ids).
 */
export function createLayoutGroups(
  world: ProcessGroup,
  layout: ParallelLayout,
  options: GroupOptions = {},
  twins: readonly GroupKind[] = [],
): LayoutGroups {
  layout.checkWorld(world.size);
  const out: Partial<Record<GroupKind, ProcessGroup>> = {};
  const mine = (kind: GroupKind): ProcessGroup => {
    const g = world.newGroups(layout.partition(kind), options);
    if (!g) throw new Error(`internal: rank ${world.rank} is in no ${kind} group of ${layout}`);
    return g;
  };
  for (const kind of GROUP_KINDS) {
    out[kind] = mine(kind);
    if (twins.includes(kind)) setStreamTwin(out[kind], mine(kind));
  }
  return { ...(out as Record<GroupKind, ProcessGroup>), world, layout, coords: layout.coords(world.rank) };
}
