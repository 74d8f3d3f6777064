// One optimizer step of the recipe: micro-batches of forward (with MTP) → CE + λ·MTP + α·balance →
// backward (gradients accumulate over micro-batches) → global-norm clipping → AdamW → aux-loss-free
// gate-bias update from the step's expert loads.
import {
  type AdamW,
  cast,
  clipFactorOnDevice,
  concat,
  crossEntropy,
  full,
  narrow,
  noGrad,
  noGradAsync,
  recyclingScopeAsync,
  reshape,
  tensor,
  type Backend,
  type Parameter,
  type Tensor,
} from '@dsv3/core';
import { runCausalLM, type DeepseekV3ForCausalLM } from '@dsv3/model';
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
  /**
   * Hand the step's activations back to the CPU free list when it ends (core's recyclingScope;
   * default true). The results are bitwise the same either way; off leaves them to the collector.
   */
  recycleActivations?: boolean;
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

/** Reads scalar tensors (null: absent) and vectors with one read-back of all of them. */
async function readLogged<K extends string>(
  scalars: Record<K, Tensor | null>,
  vectors: Record<string, Tensor>,
): Promise<{ logged: Record<K, number | null>; vectors: Record<string, number[]> }> {
  const present = (Object.keys(scalars) as K[]).filter((k) => scalars[k] !== null);
  const parts = [
    ...present.map((k) => reshape(scalars[k]!, [1])),
    ...Object.values(vectors).map((t) => reshape(t, [-1])),
  ];
  // One dtype for the concat: f64 where some part is (the CPU), else f32.
  const dtype = parts.some((t) => t.dtype === 'f64') ? 'f64' : 'f32';
  const values = parts.length ? await noGrad(() => concat(parts.map((t) => cast(t, dtype)))).data() : [];
  const logged = {} as Record<K, number | null>;
  for (const k of Object.keys(scalars) as K[]) logged[k] = scalars[k] ? Number(values[present.indexOf(k)]) : null;
  const out: Record<string, number[]> = {};
  let at = present.length;
  for (const [k, t] of Object.entries(vectors)) {
    out[k] = Array.from(values.slice(at, at + t.size) as ArrayLike<number>, Number);
    at += t.size;
  }
  return { logged, vectors: out };
}

/**
 * Next-token targets of ids [B, S]: each position's following token, the last position ignored
 * (-100), built on the ids' backend (no read-back). CE over all S logits against these equals CE of
 * the first S−1 logits against ids[:, 1:], without copying the logits (B·S·vocabulary values) into a
 * slice and its gradient back.
 */
export function nextTokenTargets(ids: Tensor): Tensor {
  const [B, S] = ids.shape as [number, number];
  const last = full([B, 1], -100, { dtype: 'i32', backend: ids.backend });
  return S > 1 ? concat([narrow(ids, 1, 1, S - 1), last], 1) : last;
}

/** The objective of one micro-batch (differentiable) and its parts. */
export async function microLoss(
  model: DeepseekV3ForCausalLM,
  ids: Tensor,
  lambda: number,
  alpha: number,
): Promise<{ total: Tensor; main: Tensor; mtp: Tensor | null; balance: Tensor | null }> {
  const useMtp = lambda > 0 && model.mtp.length > 0;
  const out = await runCausalLM(model, ids, { mtp: useMtp });
  const main = crossEntropy(out.logits, nextTokenTargets(ids));
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
  const run = () => stepOnce(model, optimizers, params, inp);
  if (inp.recycleActivations === false) return run();
  // What the step leaves behind lives in the model (weights, gradients, gate state) and the optimizers.
  return recyclingScopeAsync(run, { keep: [model, optimizers, params] });
}

async function stepOnce(
  model: DeepseekV3ForCausalLM,
  optimizers: AdamW[],
  params: Parameter[],
  inp: StepInputs,
): Promise<StepResult> {
  const n = inp.sequences.length;
  if (n % inp.microBatch !== 0) throw new Error(`${n} sequences do not split into micro-batches of ${inp.microBatch}`);
  for (const o of optimizers) o.zeroGrad();
  // The logged scalars accumulate on the model's backend and are read once, with the gradient norm.
  const sums: { loss: Tensor | null; main: Tensor | null; mtp: Tensor | null; balance: Tensor | null } = {
    loss: null,
    main: null,
    mtp: null,
    balance: null,
  };
  const accumulate = (key: keyof typeof sums, t: Tensor | null, share: number): void => {
    if (!t) return;
    const part = noGrad(() => t.detach().mul(share));
    sums[key] = sums[key] ? noGrad(() => sums[key]!.add(part)) : part;
  };
  for (let i = 0; i < n; i += inp.microBatch) {
    const ids = batchTensor(inp.sequences.slice(i, i + inp.microBatch), model.backend);
    const l = await microLoss(model, ids, inp.mtpLambda, inp.seqAuxAlpha);
    const share = inp.microBatch / n;
    l.total.mul(share).backward();
    accumulate('loss', l.total, share);
    accumulate('main', l.main, share);
    accumulate('mtp', l.mtp, share);
    accumulate('balance', l.balance, share);
  }
  // The step's one read-back, before the update: the logged scalars, the gradient norm and each MoE
  // layer's expert loads (for MaxVio). A NaN or Inf gradient stops here with the weights intact.
  const moes = moeLayers(model);
  const loadsAt: Record<string, Tensor> = Object.fromEntries(
    moes.flatMap((m, i) => [
      [`load${i}`, m.gate.pendingLoad],
      [`nan${i}`, m.gate.pendingNaNTokens],
    ]),
  );
  // Clipping's factor goes to AdamW, which reads each gradient scaled by it (no pass of its own).
  const clip = clipFactorOnDevice(params, inp.clipNorm);
  const { logged, vectors } = await readLogged({ ...sums, gradNorm: clip?.norm ?? null }, loadsAt);
  // NaN gate scores: a GPU router counts them (it cannot throw); stop naming the layer, weights intact.
  moes.forEach((moe, i) => {
    const n = vectors[`nan${i}`]![0]!;
    if (n > 0) {
      const name = model.namedModules().find(([, m]) => m === moe)![0];
      throw new Error(
        `MoE layer ${name}: the gate scores of ${n} token(s) held NaN in this step (the router cannot rank them); stopped before the update`,
      );
    }
  });
  const gradNorm = logged.gradNorm ?? 0;
  if (!Number.isFinite(gradNorm))
    throw new Error(`clipGradNorm: the gradient norm is ${gradNorm} (a NaN or Inf gradient)`);
  // Experts idle over the whole step get zero gradients on every backend, as in a parallel step (see
  // MoE.fillIdleExpertGrads).
  for (const moe of moes) moe.fillIdleExpertGrads();
  for (const o of optimizers) o.stepUpdate(inp.lr, clip?.factor);
  const vio = moes.map((moe, i) => {
    const load = vectors[`load${i}`]!;
    // The aux-loss-free bias update stays on the device, from the loads the gate accumulated.
    if (moe.gate.hasBias && inp.biasUpdateSpeed > 0) noGrad(() => moe.gate.updateBias(undefined, inp.biasUpdateSpeed));
    else moe.gate.resetPendingLoad();
    return load.some((v) => v > 0) ? maxVio(load) : 0;
  });
  return {
    loss: logged.loss ?? NaN,
    mainLoss: logged.main ?? NaN,
    mtpLoss: logged.mtp,
    balanceLoss: logged.balance ?? 0,
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
        const out = await runCausalLM(model, ids);
        return crossEntropy(out.logits, nextTokenTargets(ids)).item();
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
