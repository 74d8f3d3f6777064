// The trainer's side of a parallel run: joins the job's process group (dsv3-run or launchLocal), checks
// the job has the ranks the config's layout needs, and wires the model and optimizers into the parallel
// step. Rank 0 is the leader: it alone writes metrics, reports and checkpoints.
import type { Parameter, Tensor } from '@dsv3/core';
import type { DeepseekV3ForCausalLM } from '@dsv3/model';
import { initProcessGroup, launchEnv, ParallelLayout, type ProcessGroup } from '@dsv3/parallel';
import type { TrainConfig } from '../config.js';
import { isFirstHolder } from './shard.js';
import { setupParallel, type ParallelRun } from './step.js';

export interface ParallelSession {
  world: ProcessGroup;
  layout: ParallelLayout;
  leader: boolean;
  run: ParallelRun | null;
}

export function layoutOf(cfg: TrainConfig): ParallelLayout {
  const p = cfg.parallel;
  return new ParallelLayout(
    { dp: p.dataParallel, ep: p.expertParallel, pp: p.pipelineParallel },
    p.ranksPerNode === null ? {} : { ranksPerNode: p.ranksPerNode },
  );
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

/**
 * Makes the model's MoE layers expert-parallel, releases the parameters this rank does not hold and
 * builds the step's optimizer over the rest (a collective).
 */
export function attachParallel(
  s: ParallelSession,
  cfg: TrainConfig,
  model: DeepseekV3ForCausalLM,
  groups: { params: Parameter[]; weightDecay: number }[],
): ParallelRun {
  s.run = setupParallel({
    world: s.world,
    layout: s.layout,
    model,
    paramGroups: groups,
    optimizer: { betas: cfg.optimizer.betas, eps: cfg.optimizer.eps, momentDType: cfg.optimizer.momentDType },
    zero1: cfg.parallel.zero1,
    schedule: cfg.parallel.schedule,
    overlapForwardBackward: cfg.parallel.overlapForwardBackward,
    ...(cfg.parallel.expertWire === 'v3' && {
      expertParallel: { dispatchWire: 'fp8' as const, combineWire: 'bf16' as const },
    }),
  });
  return s.run;
}

/**
 * The optimizer moments of the parameters this rank writes (those it is the first holder of), named
 * `<param>.exp_avg` / `<param>.exp_avg_sq` as in a one-process checkpoint. Every rank calls it (ZeRO-1
 * gathers its blocks over each parameter's holders).
 */
export async function runMoments(run: ParallelRun): Promise<Record<string, Tensor>> {
  const byParam = new Map<Parameter, { m: Tensor; v: Tensor }>();
  if (run.zero) for (const { param, m, v } of await run.zero.fullMoments()) byParam.set(param, { m, v });
  else
    for (const o of run.adam!)
      for (const p of o.params) {
        const s = o.moments(p);
        if (s) byParam.set(p, s);
      }
  const out: Record<string, Tensor> = {};
  for (const [name, p] of run.plan.held) {
    const s = byParam.get(p);
    if (!s || !isFirstHolder(run.plan, name)) continue;
    out[`${name}.exp_avg`] = s.m;
    out[`${name}.exp_avg_sq`] = s.v;
  }
  return out;
}

/** AdamW step counters (decayed group, non-decayed group), as the trainer state stores them. */
export function adamSteps(run: ParallelRun): [number, number] {
  if (run.zero) return [run.zero.step, run.zero.step];
  return [run.adam![0]?.step ?? 0, run.adam![1]?.step ?? 0];
}

/** After resuming: the held parameters take their moments (and the step counters) from a checkpoint's. */
export function loadRunMoments(run: ParallelRun, steps: [number, number], moments: Record<string, Tensor>): void {
  const nameOf = new Map(run.plan.held.map(([n, p]) => [p, n]));
  const of = (p: Parameter) => {
    const n = nameOf.get(p);
    const m = n && moments[`${n}.exp_avg`];
    const v = n && moments[`${n}.exp_avg_sq`];
    return m && v ? { m, v } : undefined;
  };
  if (run.zero) {
    run.zero.loadFullMoments(steps[0], of);
    return;
  }
  run.adam!.forEach((o, i) => {
    o.step = steps[i]!;
    for (const p of o.params) {
      const s = of(p);
      if (s) o.setMoments(p, s);
    }
  });
}
