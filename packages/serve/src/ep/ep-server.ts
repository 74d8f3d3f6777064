// Expert-parallel serving on one rank of an EP group: this rank's engine core (its own requests,
// attention data-parallel) over a model whose MoE layers run through ExpertParallelMoE. The ranks
// step in lockstep — a rank without work runs an empty step so the all-to-alls of every MoE layer
// still meet — and agree each step (one small all-reduce) on whether to go on and whether to
// re-place the experts: every `replaceIntervalMs` rank 0 calls for it, the per-expert load counters
// are summed over the ranks and EPLB computes the new placement between two steps, so no request is
// dropped or stalled beyond that one computation.
import { full } from '@dsv3/core';
import { MoE } from '@dsv3/moe';
import type { DeepseekV3ForCausalLM } from '@dsv3/model';
import type { ProcessGroup } from '@dsv3/parallel';
import type { EngineCore } from '../engine-core.js';
import type { RequestOutput } from '../sequence.js';
import { ExpertParallelMoE } from './ep-moe.js';
import { ExpertShard } from './expert-shard.js';
import { eplbPlacement, roundRobinPlacement, type ExpertPlacement } from './placement.js';

export interface ExpertParallelOptions {
  /** Expert slots per rank (default: just enough for one copy of each expert, plus one). */
  slotsPerRank?: number;
  /** Re-place the experts from live loads this often (ms; 0 = never; V3: about 10 minutes). */
  replaceIntervalMs?: number;
  /** Two-micro-batch overlap in every MoE layer (default off; all ranks must agree). */
  twoMicroBatches?: boolean;
  /**
   * Keep only this rank's experts in memory: the checkpoint directory the model was loaded from
   * (experts a re-placement moves here are read from it). Default: every rank keeps every expert.
   */
  shardExpertsFrom?: string;
  /**
   * With shardExpertsFrom: 'own' when the model was loaded with only this rank's experts of the first
   * placement (loadModel's keep: startupKeep(config, rank, ranks)), so the others were never read;
   * 'all' (default) when it was loaded whole (the others are freed here).
   */
  expertsLoaded?: 'all' | 'own';
  /** How long the ranks wait between two polls while none has work (default 2 ms). */
  idleMs?: number;
  /** Called on every rank after each re-placement. */
  onReplace?: (r: Replacement) => void;
}

export interface RunHooks {
  /** each step's outputs */
  onOutputs?: (o: RequestOutput[]) => void;
  /** whether more requests will come (the loop idles instead of returning) */
  more?: () => boolean;
  /** called on every rank at the same step when no rank has work */
  onIdle?: () => void;
  /**
   * Called on every rank at the start of each lockstep iteration, before the ranks agree on whether
   * there is work (e.g. to exchange requests and outputs with the front end).
   */
  exchange?: () => Promise<void>;
}

export interface Replacement {
  step: number;
  /** whether some rank had requests in flight (a re-placement between two of their steps) */
  duringRequests: boolean;
  /** [layers][ranks] rows each rank computed since the previous placement */
  rankRows: number[][];
  placement: ExpertPlacement;
}

export class ExpertParallelServer {
  readonly layers: ExpertParallelMoE[] = [];
  placement: ExpertPlacement;
  readonly slotsPerRank: number;
  readonly replacements: Replacement[] = [];
  steps = 0;
  private readonly replaceIntervalMs: number;
  private lastReplace = Date.now();
  private forwards = 0;
  private replaceRequested = false;
  private readonly idleMs: number;
  private readonly onReplace: ((r: Replacement) => void) | null;
  /** this rank's experts in memory (null: every rank keeps every expert) */
  readonly shard: ExpertShard | null;

  constructor(
    readonly model: DeepseekV3ForCausalLM,
    readonly group: ProcessGroup,
    opts: ExpertParallelOptions = {},
  ) {
    for (const [i, layer] of model.model.layers.items.entries()) {
      if (!(layer.mlp instanceof MoE)) continue;
      const ep = new ExpertParallelMoE(layer.mlp, this.layers.length, group, () => this.placement);
      ep.twoMicroBatches = opts.twoMicroBatches ?? false;
      this.layers.push(ep);
      // the model's ragged step runs the layer through runMoE: this instance's now runs expert-parallel
      layer.mlp.distributed = (x) => {
        if (i === this.firstMoeIndex) this.forwards++;
        return ep.forward(x);
      };
    }
    if (!this.layers.length) throw new Error('the model has no MoE layer to run expert-parallel');
    const E = this.layers[0]!.logicalExperts;
    this.slotsPerRank = opts.slotsPerRank ?? Math.ceil(E / group.size) + 1;
    if (this.slotsPerRank * group.size < E)
      throw new RangeError(
        `${group.size} ranks × ${this.slotsPerRank} slots cannot hold the ${E} experts (the shared one included)`,
      );
    this.placement = roundRobinPlacement(this.layers.length, E, group.size);
    this.replaceIntervalMs = opts.replaceIntervalMs ?? 0;
    this.idleMs = opts.idleMs ?? 2;
    this.onReplace = opts.onReplace ?? null;
    if (opts.expertsLoaded === 'own' && !opts.shardExpertsFrom)
      throw new Error(
        "expertsLoaded 'own' needs shardExpertsFrom (the checkpoint the experts this rank lacks are read from)",
      );
    this.shard = opts.shardExpertsFrom
      ? new ExpertShard(
          model,
          opts.shardExpertsFrom,
          group.rank,
          opts.expertsLoaded === 'own' ? this.placement : undefined,
        )
      : null;
    this.shard?.apply(this.placement);
  }

  private get firstMoeIndex(): number {
    return this.model.model.layers.items.findIndex((l) => l.mlp instanceof MoE);
  }

  /** Re-places the experts at the next step (on any rank: the ranks agree through the step's flags). */
  requestReplace(): void {
    this.replaceRequested = true;
  }

  /**
   * Steps `core` in lockstep with the other ranks until no rank has work and no rank's `more()` says
   * more requests will come.
   */
  async run(core: EngineCore, hooks: RunHooks = {}): Promise<void> {
    for (;;) {
      await hooks.exchange?.();
      const due =
        this.replaceRequested ||
        (this.group.rank === 0 &&
          this.replaceIntervalMs > 0 &&
          Date.now() - this.lastReplace >= this.replaceIntervalMs);
      this.replaceRequested = false;
      const flags = new Float64Array([core.hasWork ? 1 : 0, due ? 1 : 0, hooks.more?.() ? 1 : 0]);
      await this.group.allReduce(flags, 'max').wait();
      if (flags[1]) await this.replace(flags[0] === 1);
      if (!flags[0]) {
        if (!flags[2]) return;
        // every rank is idle at the same step: a moment to add requests (all ranks see it together)
        hooks.onIdle?.();
        await new Promise((r) => setTimeout(r, this.idleMs));
        continue;
      }
      const before = this.forwards;
      if (core.hasWork) hooks.onOutputs?.(await core.step());
      if (this.forwards === before) await this.idleStep();
      this.steps++;
    }
  }

  /** Every MoE layer's collectives with no tokens (a rank without work this step). */
  async idleStep(): Promise<void> {
    const H = this.model.config.hiddenSize;
    const empty = full([0, H], 0, { dtype: 'f32', backend: this.layers[0]!.moe.gate.weight.value.backend });
    for (const l of this.layers) await l.forward(empty);
  }

  /** Re-places the experts from the load counters summed over the ranks (every rank calls it together). */
  async replace(duringRequests = false): Promise<void> {
    const E = this.layers[0]!.logicalExperts;
    const L = this.layers.length;
    const P = this.group.size;
    const load = new Float64Array(L * E);
    const rows = new Float64Array(L * P);
    this.layers.forEach((l, i) => {
      load.set(l.stats.routed, i * E);
      rows[i * P + this.group.rank] = l.stats.computed;
    });
    await this.group.allReduce(load, 'sum').wait();
    await this.group.allReduce(rows, 'sum').wait();
    const perLayer = Array.from({ length: L }, (_, i) => Array.from(load.subarray(i * E, (i + 1) * E)));
    this.placement = eplbPlacement(perLayer, P, this.slotsPerRank);
    this.shard?.apply(this.placement);
    const r: Replacement = {
      step: this.steps,
      duringRequests,
      rankRows: Array.from({ length: L }, (_, i) => Array.from(rows.subarray(i * P, (i + 1) * P))),
      placement: this.placement,
    };
    this.replacements.push(r);
    this.onReplace?.(r);
    for (const l of this.layers) l.resetStats();
    this.lastReplace = Date.now();
  }

  /** [layers][ranks] rows each rank computed since the last placement (every rank calls it together). */
  async rankRows(): Promise<number[][]> {
    const L = this.layers.length;
    const P = this.group.size;
    const rows = new Float64Array(L * P);
    this.layers.forEach((l, i) => (rows[i * P + this.group.rank] = l.stats.computed));
    await this.group.allReduce(rows, 'sum').wait();
    return Array.from({ length: L }, (_, i) => Array.from(rows.subarray(i * P, (i + 1) * P)));
  }
}
