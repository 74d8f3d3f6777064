// Which rank holds which parameter on a parallel layout. A pipeline rank holds only the units of its
// stages (DualPipe: stages r and P−1−r, so every parameter twice), the embedding only where a stage
// uses it (the first stage; the last too when MTP modules embed their tokens) and the head (final norm,
// output head, MTP modules) on the last stage; an EP rank holds only the routed experts its placement
// gives it (EPLB's redundant replicas included). Every rank computes the same plan for the whole world,
// so the groups a parameter's gradient is summed over can be created collectively.
import { bytesPerElement, tensor, type Parameter, type Tensor } from '@dsv3/core';
import type { DeepseekV3ForCausalLM } from '@dsv3/model';
import { MoE } from '@dsv3/moe';
import { stageHolders, type ExpertPlacement, type ParallelLayout, type ScheduleKind } from '@dsv3/parallel';
import { stageUnits } from './stages.js';

export interface ShardPlan {
  rank: number;
  /** World ranks holding each state-dict entry (parameters and buffers), ascending. */
  holders: Map<string, number[]>;
  /** Names of the model's parameters (the rest of `holders` are buffers). */
  parameterNames: string[];
  /** This rank's parameters, in the model's order. */
  held: [string, Parameter][];
}

/** Units of a state-dict name: embedding 0, layer i → i + 1, head (final norm, lm_head, MTP) L + 1. */
function unitsOf(name: string, layers: number, hasMtp: boolean): number[] {
  if (name.startsWith('model.embed_tokens.')) return hasMtp ? [0, layers + 1] : [0];
  const m = /^model\.layers\.(\d+)\./.exec(name);
  return m ? [Number(m[1]) + 1] : [layers + 1];
}

/**
 * The plan of `layout` for `model` with the pipeline split of `schedule` and the expert placement of
 * each MoE layer (none: every EP rank holds every expert).
 */
export function shardPlan(
  model: DeepseekV3ForCausalLM,
  layout: ParallelLayout,
  schedule: ScheduleKind,
  rank: number,
  placements: Map<MoE, ExpertPlacement>,
): ShardPlan {
  const L = model.config.numHiddenLayers;
  const hasMtp = model.mtp.length > 0;
  const P = layout.dims.pp;
  const holdersOfStage = stageHolders(schedule, P);
  const units = stageUnits(L, holdersOfStage.length);
  // pipeline ranks holding each unit
  const unitPp = Array.from({ length: L + 2 }, (_, u) =>
    units.flatMap(([a, b], s) => (u >= a && u < b ? holdersOfStage[s]! : [])),
  );
  const expertOf = new Map<string, { placement: ExpertPlacement; prefix: string }>();
  for (const [name, m] of model.namedModules())
    if (m instanceof MoE && placements.has(m)) expertOf.set(name, { placement: placements.get(m)!, prefix: name });
  const world = Array.from({ length: layout.worldSize }, (_, r) => layout.coords(r));
  const holders = new Map<string, number[]>();
  for (const name of Object.keys(model.stateDict())) {
    const pp = new Set(unitsOf(name, L, hasMtp).flatMap((u) => unitPp[u]!));
    const epRanks = expertEpRanks(name, expertOf);
    holders.set(
      name,
      world.flatMap((c, r) => (pp.has(c.pp) && (!epRanks || epRanks.has(c.ep)) ? [r] : [])),
    );
  }
  const all = model.namedParameters();
  const held = all.filter(([n]) => holders.get(n)!.includes(rank));
  return { rank, holders, parameterNames: all.map(([n]) => n), held };
}

/** The EP ranks holding a routed expert's slots, or null for a name that is not a routed expert's. */
function expertEpRanks(
  name: string,
  expertOf: Map<string, { placement: ExpertPlacement; prefix: string }>,
): Set<number> | null {
  const m = /^(.*)\.experts\.(\d+)\./.exec(name);
  const moe = m && expertOf.get(m[1]!);
  if (!moe) return null;
  const p = moe.placement;
  return new Set(p.replicas[Number(m![2])]!.map((slot) => p.physRank[slot]!));
}

/** Whether this rank is the lowest-numbered holder of a name (it writes it and counts it in the norm). */
export const isFirstHolder = (plan: ShardPlan, name: string): boolean => plan.holders.get(name)![0] === plan.rank;

const RELEASED = Symbol('dsv3.releasedParameter');

/**
 * Frees the storage of every parameter this rank does not hold: its value becomes an empty tensor
 * (marked, so a use of it fails loudly instead of computing with zeros).
 */
export function releaseUnheld(model: DeepseekV3ForCausalLM, plan: ShardPlan): void {
  const mine = new Set(plan.held.map(([, p]) => p));
  for (const [, p] of model.namedParameters()) {
    if (mine.has(p)) continue;
    const old = p.value;
    const empty = tensor(new Float32Array(0), { shape: [0], dtype: 'f32', backend: old.backend });
    (empty as Tensor & { [RELEASED]?: true })[RELEASED] = true;
    p.value = empty;
    old.dispose();
  }
}

/** Bytes of parameter storage a model holds (released parameters count zero). */
export function heldParameterBytes(model: DeepseekV3ForCausalLM): number {
  return model.parameters().reduce((a, p) => a + p.value.size * bytesPerElement(p.value.dtype), 0);
}
