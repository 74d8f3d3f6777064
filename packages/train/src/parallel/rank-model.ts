// A parallel rank's model with memory for its own shards only (its stages, its experts and EPLB
// replicas): a fresh one is initialised as the whole model would be from the same seed (held-init.ts),
// a checkpoint is read only where this rank holds the tensor. The rest of the model is zero
// placeholders the OS never maps, which setupParallel() then releases: a rank's peak memory is what it
// holds, not the whole model.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cpu, type Backend } from '@dsv3/core';
import { DeepseekV3ForCausalLM, loadModel, parseConfig, type ModelConfig } from '@dsv3/model';
import { contiguousPlacement, type ExpertPlacement, type ParallelLayout, type ScheduleKind } from '@dsv3/parallel';
import type { TrainConfig } from '../config.js';
import { modelConfigOf } from '../model.js';
import { moeLayers } from '../step.js';
import { buildHeld, type HeldBuildOptions } from './held-init.js';
import type { ParallelSession } from './session.js';
import { shardPlan } from './shard.js';

export interface RankShardOptions {
  layout: ParallelLayout;
  rank: number;
  /** pipeline schedule (it fixes which stages a pipeline rank holds) */
  schedule: ScheduleKind;
  /** every MoE layer's expert placement (default: contiguous blocks, as expertParallel's) */
  placement?: ExpertPlacement;
}

/** The state-dict entries each model was built to hold (the others never got memory). */
const builtFor = new WeakMap<DeepseekV3ForCausalLM, (name: string) => boolean>();

/** Whether `o.rank` holds each state-dict entry of `model` (the shard plan setupParallel() will make). */
export function rankKeeps(model: DeepseekV3ForCausalLM, o: RankShardOptions): (name: string) => boolean {
  const ep = o.layout.dims.ep;
  const placements = new Map(
    ep > 1 ? moeLayers(model).map((m) => [m, o.placement ?? contiguousPlacement(m.config.nRoutedExperts, ep)]) : [],
  );
  const plan = shardPlan(model, o.layout, o.schedule, o.rank, placements);
  return (name) => plan.holders.get(name)!.includes(o.rank);
}

/**
 * A fresh model with only `o.rank`'s shards in memory, equal on them to
 * `new DeepseekV3ForCausalLM(config, init)`; `materializedBytes` is what its state dict occupies.
 */
export function initRankModel(
  config: ModelConfig,
  init: HeldBuildOptions,
  o: RankShardOptions,
): { model: DeepseekV3ForCausalLM; materializedBytes: number } {
  let keep: ((name: string) => boolean) | undefined;
  const built = buildHeld(config, init, (model) => (keep = rankKeeps(model, o)));
  builtFor.set(built.model, keep!);
  return built;
}

/** A checkpoint's weights (f32), read only where `o.rank` holds the tensor. */
export function loadRankModel(dir: string, o: RankShardOptions): DeepseekV3ForCausalLM {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  } catch (e) {
    throw new Error(`cannot read ${join(dir, 'config.json')}: ${(e as Error).message}`);
  }
  // Names only: an untouched skeleton to plan the shards on.
  const skeleton = cpu.deferUploads(() => new DeepseekV3ForCausalLM(parseConfig(raw), { init: 'none' }));
  const keep = rankKeeps(skeleton, o);
  const model = loadModel(dir, { backend: cpu, dtype: 'f32', keep });
  builtFor.set(model, keep);
  return model;
}

/** The trainer's model on a parallel rank: the checkpoint it resumes or fine-tunes from, or a fresh one. */
export function buildRankModel(
  cfg: TrainConfig,
  s: ParallelSession,
  backend: Backend,
  resumeDir: string | undefined,
): DeepseekV3ForCausalLM {
  if (backend !== cpu) throw new Error(`parallel training runs on the cpu backend, not ${backend.name}`);
  const o: RankShardOptions = { layout: s.layout, rank: s.world.rank, schedule: cfg.parallel.schedule };
  const dir = resumeDir ?? cfg.model.checkpoint;
  if (dir) return loadRankModel(dir, o);
  const init = { seed: cfg.seed, ...(cfg.model.initStd !== undefined && { std: cfg.model.initStd }) };
  return initRankModel(modelConfigOf(cfg), init, o).model;
}

/**
 * Fails when `model` was built for other shards than `held` (another layout, rank or schedule): those
 * parameters would be zeros that were never initialised.
 */
export function checkBuiltFor(model: DeepseekV3ForCausalLM, held: readonly string[]): void {
  const keep = builtFor.get(model);
  const missing = keep ? held.filter((n) => !keep(n)) : [];
  if (missing.length)
    throw new Error(
      `this rank's model was built holding other shards than the layout gives it (${missing.length} parameters never initialised, e.g. ${missing[0]}): build it with the same layout, rank and schedule`,
    );
}
