// One optimizer step of the recipe: micro-batches of forward (with MTP) → CE + λ·MTP + α·balance →
// backward (gradients accumulate over micro-batches) → global-norm clipping → AdamW → aux-loss-free
// gate-bias update from the step's expert loads.
import {
  type AdamW,
  clipGradNorm,
  crossEntropy,
  noGradAsync,
  tensor,
  type Backend,
  type Parameter,
  type Tensor,
} from '@dsv3/core';
import type { DeepseekV3ForCausalLM } from '@dsv3/model';
import { maxVio, MoE, sequenceBalanceLossT } from '@dsv3/moe';
import { mtpLoss } from '@dsv3/mtp';

export interface StepInputs {
  /** The step's sequences, each seqLen tokens. */
  sequences: readonly Int32Array[];
  microBatch: number;
  lr: number;
  mtpLambda: number;
  seqAuxAlpha: number;
  biasUpdateSpeed: number;
  clipNorm: number;
}

export interface StepResult {
  loss: number;
  mainLoss: number;
  mtpLoss: number | null;
  balanceLoss: number;
  gradNorm: number;
  maxVio: number[];
}

/** Every MoE layer of the model: main layers first, then the MTP blocks'. */
export function moeLayers(model: DeepseekV3ForCausalLM): MoE[] {
  return model.modules().filter((m): m is MoE => m instanceof MoE);
}

export function batchTensor(seqs: readonly Int32Array[], backend: Backend | undefined): Tensor {
  const S = seqs[0]!.length;
  const flat = new Int32Array(seqs.length * S);
  seqs.forEach((s, i) => flat.set(s, i * S));
  return tensor(flat, { shape: [seqs.length, S], dtype: 'i32', ...(backend && { backend }) });
}

/**
 * Next-token targets of ids [B, S]: each position's following token, the last position ignored
 * (-100). CE over all S logits against these equals CE of the first S−1 logits against ids[:, 1:],
 * without copying the logits (B·S·vocabulary values) into a slice and its gradient back.
 */
export async function nextTokenTargets(ids: Tensor): Promise<Tensor> {
  const [B, S] = ids.shape as [number, number];
  const v = await ids.data();
  const t = new Int32Array(B * S);
  for (let b = 0; b < B; b++) {
    for (let s = 0; s + 1 < S; s++) t[b * S + s] = v[b * S + s + 1]!;
    t[b * S + S - 1] = -100;
  }
  return tensor(t, { shape: [B, S], dtype: 'i32', backend: ids.backend });
}

/** The objective of one micro-batch (differentiable) and its parts. */
export async function microLoss(
  model: DeepseekV3ForCausalLM,
  ids: Tensor,
  lambda: number,
  alpha: number,
): Promise<{ total: Tensor; main: Tensor; mtp: Tensor | null; balance: Tensor | null }> {
  const useMtp = lambda > 0 && model.mtp.length > 0;
  const out = await model.forwardAsync(ids, { mtp: useMtp });
  const main = crossEntropy(out.logits, await nextTokenTargets(ids));
  let total = main;
  let mtp: Tensor | null = null;
  if (useMtp) {
    const m = mtpLoss(out.mtpLogits!, ids, { lambda });
    total = total.add(m.loss);
    mtp = m.perDepth.reduce((a, b) => a.add(b)).div(m.perDepth.length);
  }
  let balance: Tensor | null = null;
  if (alpha > 0) {
    const B = ids.shape[0]!;
    for (const moe of moeLayers(model)) {
      const r = moe.lastRouting;
      if (!r || r.numTokens === 0) continue;
      const l = sequenceBalanceLossT(r.scores, r.indices, { alpha, seqLen: r.numTokens / B });
      balance = balance ? balance.add(l) : l;
    }
    if (balance) total = total.add(balance);
  }
  return { total, main, mtp, balance };
}

export async function trainStep(
  model: DeepseekV3ForCausalLM,
  optimizers: AdamW[],
  params: Parameter[],
  inp: StepInputs,
): Promise<StepResult> {
  const n = inp.sequences.length;
  if (n % inp.microBatch !== 0) throw new Error(`${n} sequences do not split into micro-batches of ${inp.microBatch}`);
  for (const o of optimizers) o.zeroGrad();
  const sums = { loss: 0, main: 0, mtp: 0, balance: 0 };
  let hasMtp = false;
  for (let i = 0; i < n; i += inp.microBatch) {
    const ids = batchTensor(inp.sequences.slice(i, i + inp.microBatch), model.backend);
    const l = await microLoss(model, ids, inp.mtpLambda, inp.seqAuxAlpha);
    const share = inp.microBatch / n;
    l.total.mul(share).backward();
    sums.loss += (await l.total.item()) * share;
    sums.main += (await l.main.item()) * share;
    if (l.mtp) {
      hasMtp = true;
      sums.mtp += (await l.mtp.item()) * share;
    }
    if (l.balance) sums.balance += (await l.balance.item()) * share;
  }
  const gradNorm = await clipGradNorm(params, inp.clipNorm);
  for (const o of optimizers) o.stepUpdate(inp.lr);
  const vio: number[] = [];
  await noGradAsync(async () => {
    for (const moe of moeLayers(model)) {
      const g = moe.gate;
      vio.push(g.pendingLoad.some((v) => v > 0) ? maxVio(g.pendingLoad) : 0);
      if (g.hasBias && inp.biasUpdateSpeed > 0) await g.updateBiasAsync(undefined, inp.biasUpdateSpeed);
      else g.pendingLoad.fill(0);
    }
  });
  return {
    loss: sums.loss,
    mainLoss: sums.main,
    mtpLoss: hasMtp ? sums.mtp : null,
    balanceLoss: sums.balance,
    gradNorm,
    maxVio: vio,
  };
}

/** Mean next-token cross-entropy over held-out sequences (no gradient, gate statistics untouched). */
export async function evaluate(
  model: DeepseekV3ForCausalLM,
  seqs: readonly Int32Array[],
  microBatch: number,
): Promise<{ loss: number; tokens: number }> {
  model.eval();
  try {
    let sum = 0;
    let count = 0;
    for (let i = 0; i < seqs.length; i += microBatch) {
      const batch = seqs.slice(i, i + microBatch);
      const ids = batchTensor(batch, model.backend);
      const S = ids.shape[1]!;
      const l = await noGradAsync(async () => {
        const out = await model.forwardAsync(ids);
        return crossEntropy(out.logits, await nextTokenTargets(ids)).item();
      });
      const t = batch.length * (S - 1);
      sum += l * t;
      count += t;
    }
    return { loss: count ? sum / count : NaN, tokens: count };
  } finally {
    model.train();
  }
}
