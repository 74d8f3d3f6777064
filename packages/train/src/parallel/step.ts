// One optimizer step of the recipe on a parallel layout (data × expert parallel): every rank reads its
// slice of the step's sequences, the MoE layers dispatch over the EP group, gradients are summed over the
// stage's data-parallel ranks (all-reduce, or ZeRO-1's reduce-scatter), and the gate-bias update uses
// the loads of the whole batch. The result is trainStep()'s on one process, up to summation order.
import { AdamW, clipGradNorm, fromRaw, noGradAsync, type Parameter } from '@dsv3/core';
import type { DeepseekV3ForCausalLM } from '@dsv3/model';
import { maxVio } from '@dsv3/moe';
import {
  backwardAsync,
  createLayoutGroups,
  expertParallel,
  Zero1AdamW,
  type ExpertParallelMoE,
  type ExpertParallelOptions,
  type LayoutGroups,
  type ParallelLayout,
  type ProcessGroup,
} from '@dsv3/parallel';
import { batchTensor, microLoss, moeLayers, type StepInputs, type StepResult } from '../step.js';

export interface ParamGroup {
  params: Parameter[];
  weightDecay: number;
}

export interface ParallelSetup {
  world: ProcessGroup;
  layout: ParallelLayout;
  model: DeepseekV3ForCausalLM;
  /** Parameter groups (weight decay per group), the same lists on every rank. */
  paramGroups: ParamGroup[];
  optimizer: { betas: [number, number]; eps: number; momentDType: 'bf16' | 'f32' };
  /** Shard the optimizer state over the data-parallel ranks. */
  zero1: boolean;
  expertParallel?: ExpertParallelOptions;
}

export interface ParallelRun {
  groups: LayoutGroups;
  model: DeepseekV3ForCausalLM;
  params: Parameter[];
  ep: ExpertParallelMoE[];
  /** Unsharded AdamW per parameter group (zero1 off), or the sharded optimizer. */
  adam: AdamW[] | null;
  zero: Zero1AdamW | null;
}

/** Creates the layout's groups and makes every MoE layer expert-parallel (a collective: every rank calls it). */
export function setupParallel(s: ParallelSetup): ParallelRun {
  const { dp, pp, tp } = s.layout.dims;
  if (pp > 1) throw new Error(`parallel layout ${s.layout}: pipeline parallelism is not wired into the training step yet (pp must be 1)`);
  if (tp > 1) throw new Error(`parallel layout ${s.layout}: tensor parallelism is not implemented (tp must be 1)`);
  void dp;
  const groups = createLayoutGroups(s.world, s.layout);
  const ep = groups.ep.size > 1 ? moeLayers(s.model).map((m) => expertParallel(m, groups.ep, s.expertParallel)) : [];
  const o = s.optimizer;
  const adam = s.zero1 ? null : s.paramGroups.map((g) => new AdamW(g.params, { betas: o.betas, eps: o.eps, weightDecay: g.weightDecay, stateDType: o.momentDType }));
  const zero = s.zero1 ? new Zero1AdamW(s.paramGroups, groups.denseDp, { betas: o.betas, eps: o.eps, momentDType: o.momentDType }) : null;
  return { groups, model: s.model, params: s.paramGroups.flatMap((g) => g.params), ep, adam, zero };
}

/** Sums every parameter's gradient over the group in one flat buffer (missing gradients count as zero). */
async function allReduceGrads(params: Parameter[], group: ProcessGroup): Promise<void> {
  if (group.size === 1) return;
  const offs = [0];
  for (const p of params) offs.push(offs.at(-1)! + p.value.size);
  const f64 = params.some((p) => p.value.dtype === 'f64');
  const flat = f64 ? new Float64Array(offs.at(-1)!) : new Float32Array(offs.at(-1)!);
  params.forEach((p, i) => p.grad && flat.set(p.grad.dataSync() as Float32Array | Float64Array, offs[i]!));
  const sum = await group.allReduce(flat, 'sum').wait();
  params.forEach((p, i) => {
    const part = sum.slice(offs[i]!, offs[i + 1]!);
    p.grad = fromRaw(p.value.dtype, p.value.shape, p.value.dtype === (f64 ? 'f64' : 'f32') ? part : Float32Array.from(part), p.value.backend);
  });
}

export async function parallelTrainStep(run: ParallelRun, inp: StepInputs): Promise<StepResult> {
  const { groups, model } = run;
  const dpGroup = groups.denseDp;
  const D = groups.layout.dataParallelSize;
  const n = inp.sequences.length;
  if (n % (D * inp.microBatch) !== 0)
    throw new Error(`${n} sequences do not split over ${D} data-parallel ranks (dp·ep) in micro-batches of ${inp.microBatch}`);
  const per = n / D;
  const mine = inp.sequences.slice(groups.layout.dataRank(groups.world.rank) * per, (groups.layout.dataRank(groups.world.rank) + 1) * per);
  if (run.zero) run.zero.zeroGrad();
  else for (const o of run.adam!) o.zeroGrad();
  const sums = new Float64Array(5); // loss, main, mtp, balance, hasMtp
  for (let i = 0; i < per; i += inp.microBatch) {
    const ids = batchTensor(mine.slice(i, i + inp.microBatch), model.backend);
    const l = await microLoss(model, ids, inp.mtpLambda, inp.seqAuxAlpha);
    const share = inp.microBatch / n;
    await backwardAsync(l.total.mul(share));
    sums[0]! += (await l.total.item()) * share;
    sums[1]! += (await l.main.item()) * share;
    if (l.mtp) {
      sums[2]! += (await l.mtp.item()) * share;
      sums[4] = 1;
    }
    if (l.balance) sums[3]! += (await l.balance.item()) * share;
  }
  const total = await dpGroup.allReduce(sums, 'sum').wait();
  let gradNorm: number;
  if (run.zero) {
    gradNorm = (await run.zero.stepUpdate(inp.lr, inp.clipNorm)).gradNorm;
  } else {
    await allReduceGrads(run.params, dpGroup);
    gradNorm = await clipGradNorm(run.params, inp.clipNorm);
    for (const o of run.adam!) o.stepUpdate(inp.lr);
  }
  const vio: number[] = [];
  await noGradAsync(async () => {
    for (const moe of moeLayers(model)) {
      const g = moe.gate;
      g.pendingLoad.set(await dpGroup.allReduce(Float64Array.from(g.pendingLoad), 'sum').wait());
      vio.push(g.pendingLoad.some((v) => v > 0) ? maxVio(g.pendingLoad) : 0);
      if (g.hasBias && inp.biasUpdateSpeed > 0) await g.updateBiasAsync(undefined, inp.biasUpdateSpeed);
      else g.pendingLoad.fill(0);
    }
  });
  return { loss: total[0]!, mainLoss: total[1]!, mtpLoss: total[4]! > 0 ? total[2]! : null, balanceLoss: total[3]!, gradNorm, maxVio: vio };
}
