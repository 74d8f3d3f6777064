// One optimizer step of the recipe on a parallel layout (data × expert × pipeline parallel): every rank
// reads its data-parallel slice of the step's sequences, the MoE layers dispatch over the EP group, a
// pipeline runs its micro-batches through the stages by the chosen schedule, gradients are summed over
// the ranks holding each parameter (all-reduce, or ZeRO-1's reduce-scatter), and the gate-bias update
// uses the loads of the whole batch. The result is trainStep()'s on one process, up to summation order.
//
// Parameters are sharded by stage and expert (shard.ts): a rank holds, steps and keeps optimizer state
// for its stages' parameters and its experts only. Each distinct set of holders gets its own group,
// over which the gradients it shares are summed (dense parameters over a stage's data-parallel ranks
// and DualPipe's two copies; an expert over its replicas and their data-parallel copies).
import {
  AdamW,
  cpuData,
  fromRaw,
  gradIsKept,
  keepGradientIn,
  keptGradient,
  full,
  mul,
  noGrad,
  noGradAsync,
  scaleInto,
  sum,
  sumOfSquares,
  type GradientArray,
  type Parameter,
} from '@dsv3/core';
import type { DeepseekV3ForCausalLM } from '@dsv3/model';
import { maxVio } from '@dsv3/moe';
import {
  backwardAsync,
  buildSchedule,
  runPipelineStep,
  scheduleError,
  type ScheduleKind,
  createLayoutGroups,
  EP_GROUP_KINDS,
  expertParallel,
  Zero1AdamW,
  type ExpertParallelMoE,
  type ExpertParallelOptions,
  type LayoutGroups,
  type ParallelLayout,
  type PipelineStepResult,
  type ProcessGroup,
} from '@dsv3/parallel';
import { batchTensor, microLoss, moeLayers, type StepInputs, type StepResult } from '../step.js';
import { groupPointToPoint } from './p2p.js';
import { checkBuiltFor } from './rank-model.js';
import { isFirstHolder, releaseUnheld, shardPlan, type ShardPlan } from './shard.js';
import { headLoss, modelStages, type StageLosses, type StageOptions } from './stages.js';

export interface ParamGroup {
  params: Parameter[];
  weightDecay: number;
}

export interface ParallelSetup {
  world: ProcessGroup;
  layout: ParallelLayout;
  model: DeepseekV3ForCausalLM;
  /** Parameter groups (weight decay per group) of the whole model, the same lists on every rank. */
  paramGroups: ParamGroup[];
  optimizer: { betas: [number, number]; eps: number; momentDType: 'bf16' | 'f32' };
  /** Shard the optimizer state over the ranks holding each parameter (ZeRO-1). */
  zero1: boolean;
  /** Pipeline schedule when pp > 1 (default 1f1b). */
  schedule?: ScheduleKind;
  expertParallel?: ExpertParallelOptions;
  /**
   * DualPipe / DualPipeV: run each FB pair's forward and backward concurrently, so one chunk's EP
   * all-to-all is hidden behind the other's computation (default true; the EP groups get twins for
   * the backward stream). false: back to back.
   */
  overlapForwardBackward?: boolean;
}

/** Parameters held by the same ranks, and the group of those ranks. */
export interface HolderBucket {
  ranks: number[];
  group: ProcessGroup;
  params: Parameter[];
  /**
   * The bucket's gradients, one flat array kept across steps (each parameter's `.grad` is its slice,
   * accumulated in place and all-reduced in place); null when its parameters are not all CPU f32 or all
   * CPU f64 (then gradients are plain tensors, summed through a temporary flat array).
   */
  grads: GradientArray | null;
  /** Where each parameter's gradient starts in the flat arrays (one more entry: the total). */
  offsets: number[];
}

export interface ParallelRun {
  groups: LayoutGroups;
  model: DeepseekV3ForCausalLM;
  plan: ShardPlan;
  /** This rank's parameters, by their holders. */
  buckets: HolderBucket[];
  /** This rank's parameters. */
  params: Parameter[];
  ep: ExpertParallelMoE[];
  /** AdamW over this rank's parameters per parameter group (zero1 off), or the sharded optimizer. */
  adam: AdamW[] | null;
  zero: Zero1AdamW | null;
  schedule: ScheduleKind;
  /** Whether the schedule's FB pairs run their forward and backward concurrently. */
  overlapForwardBackward: boolean;
  /** The last step's pipeline pass on this rank (pp > 1): its span and compute ops (performance.now() ms). */
  lastPipeline: { start: number; end: number; trace: PipelineStepResult['trace'] } | null;
}

/**
 * Creates the layout's groups, makes every MoE layer expert-parallel, releases the parameters this
 * rank does not hold and builds the optimizer over the rest (a collective: every rank calls it).
 */
export function setupParallel(s: ParallelSetup): ParallelRun {
  if (s.layout.dims.tp > 1)
    throw new Error(`parallel layout ${s.layout}: tensor parallelism is not implemented (tp must be 1)`);
  const schedule = s.schedule ?? '1f1b';
  // Only DualPipe's schedules have FB pairs; their backward half communicates on twins of the EP groups.
  // The twins exist with the overlap off too, so both settings create the same groups (the same ids):
  // every group gets the same transport path (the local transport's shared memory goes to the lowest
  // ids), hence the same all-reduce summation order, and the two settings give bitwise the same step.
  const overlapForwardBackward = s.overlapForwardBackward ?? true;
  const twins = s.layout.dims.ep > 1 && (schedule === 'dualpipe' || schedule === 'dualpipev') ? EP_GROUP_KINDS : [];
  const groups = createLayoutGroups(s.world, s.layout, {}, twins);
  // An EP group spanning nodes dispatches in two hops (across nodes, then within the node).
  const hops: ExpertParallelOptions =
    s.layout.epNodes > 1
      ? { hierarchical: { intra: groups.epIntra, inter: groups.epInter }, ranksPerNode: s.layout.epRanksPerNode }
      : {};
  const ep =
    groups.ep.size > 1
      ? moeLayers(s.model).map((m) => expertParallel(m, groups.ep, { ...hops, ...s.expertParallel }))
      : [];
  const plan = shardPlan(s.model, s.layout, schedule, s.world.rank, new Map(ep.map((h) => [h.moe, h.placement])));
  checkBuiltFor(
    s.model,
    plan.held.map(([n]) => n),
  );
  const buckets = holderBuckets(s.world, plan);
  releaseUnheld(s.model, plan);
  const held = new Set(plan.held.map(([, p]) => p));
  const o = s.optimizer;
  const adam = s.zero1
    ? null
    : s.paramGroups.map(
        (g) =>
          new AdamW(
            g.params.filter((p) => held.has(p)),
            { betas: o.betas, eps: o.eps, weightDecay: g.weightDecay, stateDType: o.momentDType },
          ),
      );
  const zero = s.zero1
    ? new Zero1AdamW(
        buckets.flatMap((b) => {
          const inBucket = new Set(b.params);
          return s.paramGroups
            .map((g) => ({
              params: g.params.filter((p) => inBucket.has(p)),
              weightDecay: g.weightDecay,
              group: b.group,
            }))
            .filter((g) => g.params.length > 0);
        }),
        s.world,
        { betas: o.betas, eps: o.eps, momentDType: o.momentDType },
      )
    : null;
  return {
    groups,
    model: s.model,
    plan,
    buckets,
    params: [...held],
    ep,
    adam,
    zero,
    schedule,
    overlapForwardBackward,
    lastPipeline: null,
  };
}

/** One group per distinct set of parameter holders (created on every rank, in one order); this rank's. */
function holderBuckets(world: ProcessGroup, plan: ShardPlan): HolderBucket[] {
  const sets = new Map<string, number[]>();
  for (const name of plan.parameterNames) {
    const ranks = plan.holders.get(name)!;
    sets.set(ranks.join(','), ranks);
  }
  const out: HolderBucket[] = [];
  for (const key of [...sets.keys()].sort()) {
    const ranks = sets.get(key)!;
    const group = world.newGroup(ranks);
    if (!group) continue;
    const mine = plan.held.filter(([n]) => plan.holders.get(n)!.join(',') === key).map(([, p]) => p);
    const offsets = [0];
    for (const p of mine) offsets.push(offsets.at(-1)! + p.value.size);
    const dtypes = new Set(mine.map((p) => (cpuData(p.value) ? p.value.dtype : 'other')));
    const only = dtypes.size === 1 ? [...dtypes][0] : 'other';
    const n = offsets.at(-1)!;
    const grads = only === 'f32' ? new Float32Array(n) : only === 'f64' ? new Float64Array(n) : null;
    out.push({ ranks, group, params: mine, grads, offsets });
  }
  return out;
}

/**
 * Points each held parameter's current value at its slice of its bucket's gradient array (the values
 * are new tensors after every optimizer step), so the step's backward passes accumulate in place.
 */
function keepGradients(run: ParallelRun): void {
  for (const b of run.buckets) {
    if (!b.grads) continue;
    b.params.forEach((p, i) => keepGradientIn(p.value, b.grads!.subarray(b.offsets[i]!, b.offsets[i + 1]!)));
  }
}

/**
 * Sums the bucket's gradients over its group in one flat array (missing gradients count as zero): in
 * place in the bucket's gradient array, which the parameters' `.grad` are slices of.
 */
async function allReduceGrads(b: HolderBucket): Promise<void> {
  const { params, group, offsets } = b;
  if (group.size === 1 || params.length === 0) return;
  const f64 = params.some((p) => p.value.dtype === 'f64');
  const flat = b.grads ?? (f64 ? new Float64Array(offsets.at(-1)!) : new Float32Array(offsets.at(-1)!));
  params.forEach((p, i) => {
    if (b.grads && gradIsKept(p.value)) return;
    const part = flat.subarray(offsets[i]!, offsets[i + 1]!);
    if (p.grad) part.set(cpuData(p.grad) ?? (p.grad.dataSync() as GradientArray));
    else part.fill(0);
  });
  const sum = await group.allReduce(flat, 'sum').wait();
  if (sum !== flat) flat.set(sum);
  params.forEach((p, i) => {
    if (b.grads) {
      p.grad = keptGradient(p.value);
      return;
    }
    const part = flat.slice(offsets[i]!, offsets[i + 1]!);
    const same = p.value.dtype === (f64 ? 'f64' : 'f32');
    p.grad = fromRaw(p.value.dtype, p.value.shape, same ? part : Float32Array.from(part), p.value.backend);
  });
}

/**
 * Zero gradients for the held routed experts that have none (idle on every rank, or summed over a group
 * of one), as one process's step gives them (MoE.fillIdleExpertGrads) and ZeRO-1's flat buffers do.
 */
function fillIdleExpertGrads(run: ParallelRun): void {
  const held = new Set(run.params);
  noGrad(() => {
    for (const moe of moeLayers(run.model))
      for (const m of moe.experts.items)
        for (const p of m.parameters())
          if (held.has(p) && !p.grad) {
            const kept = keptGradient(p.value);
            if (kept) cpuData(kept)!.fill(0);
            p.grad = kept ?? full(p.value.shape, 0, { dtype: p.value.dtype, backend: p.value.backend });
          }
  });
}

/**
 * Clips the summed gradients by the norm of the whole model's gradient: each parameter counted once,
 * by its first holder, summed over the world. Returns the norm before clipping. Kept gradient buffers
 * are read and scaled in place (the scale rounded to their dtype, as a tensor product rounds it).
 */
async function clipByGlobalNorm(run: ParallelRun, maxNorm: number): Promise<number> {
  let sq = 0;
  for (const [name, p] of run.plan.held)
    if (p.grad && isFirstHolder(run.plan, name)) {
      const d = cpuData(p.grad);
      if (d) sq += sumOfSquares(d);
      else sq += noGrad(() => sum(mul(p.grad!, p.grad!))).dataSync()[0]!;
    }
  const norm = Math.sqrt((await run.groups.world.allReduce(Float64Array.of(sq), 'sum').wait())[0]!);
  if (!Number.isFinite(norm)) throw new Error(`the gradient norm is ${norm} (a NaN or Inf gradient)`);
  if (norm > maxNorm) {
    const scale = maxNorm / (norm + 1e-6);
    noGrad(() => {
      for (const p of run.params) {
        if (!p.grad) continue;
        if (!gradIsKept(p.value)) {
          p.grad = mul(p.grad, scale);
          continue;
        }
        scaleInto(cpuData(p.grad)!, scale);
      }
    });
  }
  return norm;
}

export async function parallelTrainStep(run: ParallelRun, inp: StepInputs): Promise<StepResult> {
  const { groups, model } = run;
  const world = groups.world;
  const D = groups.layout.dataParallelSize;
  const n = inp.sequences.length;
  if (n % (D * inp.microBatch) !== 0)
    throw new Error(
      `${n} sequences do not split over ${D} data-parallel ranks (dp·ep) in micro-batches of ${inp.microBatch}`,
    );
  const per = n / D;
  const at = groups.layout.dataRank(world.rank) * per;
  const mine = inp.sequences.slice(at, at + per);
  if (run.zero) run.zero.zeroGrad();
  else for (const o of run.adam!) o.zeroGrad();
  keepGradients(run);
  const sums: StageLosses = { total: 0, main: 0, mtp: 0, balance: 0, hasMtp: false };
  if (groups.pp.size > 1) await pipelinePass(run, mine, inp, n, sums);
  else await dataParallelPass(run, mine, inp, n, sums);
  const total = await world
    .allReduce(Float64Array.of(sums.total, sums.main, sums.mtp, sums.balance, sums.hasMtp ? 1 : 0), 'sum')
    .wait();
  let gradNorm: number;
  if (run.zero) {
    gradNorm = (await run.zero.stepUpdate(inp.lr, inp.clipNorm)).gradNorm;
  } else {
    for (const b of run.buckets) await allReduceGrads(b);
    fillIdleExpertGrads(run);
    gradNorm = await clipByGlobalNorm(run, inp.clipNorm);
    for (const o of run.adam!) o.stepUpdate(inp.lr);
  }
  const vio: number[] = [];
  await noGradAsync(async () => {
    for (const moe of moeLayers(model)) {
      const g = moe.gate;
      // the loads are summed over the ranks on the host (and logged)
      const load = await world.allReduce(Float64Array.from(await g.pendingLoad.data()), 'sum').wait();
      vio.push(load.some((v) => v > 0) ? maxVio(load) : 0);
      if (g.hasBias && inp.biasUpdateSpeed > 0) g.updateBias(load, inp.biasUpdateSpeed);
      g.resetPendingLoad();
    }
  });
  return {
    loss: total[0]!,
    mainLoss: total[1]!,
    mtpLoss: total[4]! > 0 ? total[2]! : null,
    balanceLoss: total[3]!,
    gradNorm,
    maxVio: vio,
  };
}

/** No pipeline: this rank's micro-batches, forward and backward in turn. */
async function dataParallelPass(
  run: ParallelRun,
  mine: readonly Int32Array[],
  inp: StepInputs,
  n: number,
  sums: StageLosses,
): Promise<void> {
  for (let i = 0; i < mine.length; i += inp.microBatch) {
    const ids = batchTensor(mine.slice(i, i + inp.microBatch), run.model.backend);
    const l = await microLoss(run.model, ids, inp.mtpLambda, inp.seqAuxAlpha);
    const share = inp.microBatch / n;
    await backwardAsync(l.total.mul(share));
    sums.total += (await l.total.item()) * share;
    sums.main += (await l.main.item()) * share;
    if (l.mtp) {
      sums.mtp += (await l.mtp.item()) * share;
      sums.hasMtp = true;
    }
    if (l.balance) sums.balance += (await l.balance.item()) * share;
  }
}

/** This rank's stages of the pipeline over its data-parallel slice, by the run's schedule. */
async function pipelinePass(
  run: ParallelRun,
  mine: readonly Int32Array[],
  inp: StepInputs,
  n: number,
  sums: StageLosses,
): Promise<void> {
  const pp = run.groups.pp;
  const chunks = mine.length / inp.microBatch;
  const err = scheduleError(run.schedule, { ranks: pp.size, chunks });
  if (err)
    throw new Error(
      `${err} (micro-batches per pipeline = sequences / (dp·ep·microBatch) = ${n} / (${run.groups.layout.dataParallelSize}·${inp.microBatch}))`,
    );
  const schedule = buildSchedule(run.schedule, { ranks: pp.size, chunks });
  const o: StageOptions = {
    share: inp.microBatch / n,
    mtpLambda: inp.mtpLambda,
    seqAuxAlpha: inp.seqAuxAlpha,
    microBatch: inp.microBatch,
    sums,
  };
  const all = modelStages(run.model, schedule.stages, o);
  const ids = (m: number) => batchTensor(mine.slice(m * inp.microBatch, (m + 1) * inp.microBatch), run.model.backend);
  const start = performance.now();
  const { trace } = await runPipelineStep({
    schedule,
    comm: groupPointToPoint(pp),
    stages: new Map(schedule.rankStages[pp.rank]!.map((s) => [s, all[s]!])),
    input: ids,
    loss: (h, m) => headLoss(run.model, h, ids(m), o),
    overlapForwardBackward: run.overlapForwardBackward,
  });
  run.lastPipeline = { start, end: performance.now(), trace };
}
