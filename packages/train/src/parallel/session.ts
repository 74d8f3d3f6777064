// The trainer's side of a parallel run: joins the job's process group (dsv3-run or launchLocal), checks
// the job has the ranks the config's layout needs, and wires the model and optimizers into the parallel
// step. Rank 0 is the leader: it alone writes metrics, reports and checkpoints.
import type { AdamW, Parameter } from '@dsv3/core';
import type { DeepseekV3ForCausalLM } from '@dsv3/model';
import { initProcessGroup, launchEnv, ParallelLayout, type ProcessGroup } from '@dsv3/parallel';
import type { TrainConfig } from '../config.js';
import { setupParallel, type ParallelRun } from './step.js';

export interface ParallelSession {
  world: ProcessGroup;
  layout: ParallelLayout;
  leader: boolean;
  run: ParallelRun | null;
}

export function layoutOf(cfg: TrainConfig): ParallelLayout {
  const p = cfg.parallel;
  return new ParallelLayout({ dp: p.dataParallel, ep: p.expertParallel, pp: p.pipelineParallel });
}

/** Null for a one-process layout; otherwise joins the job (every rank calls this). */
export async function joinParallel(cfg: TrainConfig): Promise<ParallelSession | null> {
  const layout = layoutOf(cfg);
  if (layout.worldSize === 1) return null;
  const env = launchEnv();
  if (env.worldSize !== layout.worldSize)
    throw new Error(
      `parallel layout ${layout} needs ${layout.worldSize} ranks; this process is rank ${env.rank} of ${env.worldSize} (launch with dsv3-run --nproc ${layout.worldSize} dsv3-train ...)`,
    );
  if (cfg.backend !== 'cpu') throw new Error('parallel training runs on the cpu backend');
  const world = await initProcessGroup();
  layout.checkWorld(world.size);
  // Every rank has checked the run directory before the leader starts writing it.
  await world.barrier().wait();
  return { world, layout, leader: world.rank === 0, run: null };
}

/** Makes the model's MoE layers expert-parallel and builds the step's optimizer (a collective). */
export function attachParallel(
  s: ParallelSession,
  cfg: TrainConfig,
  model: DeepseekV3ForCausalLM,
  groups: { params: Parameter[]; weightDecay: number }[],
  adam: AdamW[],
): ParallelRun {
  s.run = setupParallel({
    world: s.world,
    layout: s.layout,
    model,
    paramGroups: groups,
    optimizer: { betas: cfg.optimizer.betas, eps: cfg.optimizer.eps, momentDType: cfg.optimizer.momentDType },
    zero1: cfg.parallel.zero1,
    adam,
    schedule: cfg.parallel.schedule,
    ...(cfg.parallel.expertWire === 'v3' && {
      expertParallel: { dispatchWire: 'fp8' as const, combineWire: 'bf16' as const },
    }),
  });
  return s.run;
}

/** Before a checkpoint: ZeRO-1's moment blocks gathered into the AdamW objects the checkpoint reads (every rank). */
export async function gatherMoments(run: ParallelRun, adam: AdamW[]): Promise<void> {
  if (!run.zero) return;
  const full = await run.zero.fullMoments();
  for (const o of adam) o.step = run.zero.step;
  for (const { param, m, v } of full) {
    const o = adam.find((a) => a.params.includes(param));
    o?.setMoments(param, { m, v });
  }
}

/** After resuming: ZeRO-1 takes its blocks of the moments the trainer loaded into the AdamW objects. */
export function scatterMoments(run: ParallelRun, adam: AdamW[]): void {
  if (!run.zero) return;
  run.zero.loadFullMoments(adam[0]?.step ?? 0, (p) => adam.find((a) => a.params.includes(p))?.moments(p));
}
