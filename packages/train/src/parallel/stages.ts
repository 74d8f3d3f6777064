// DeepSeek-V3 split into pipeline stages. The model is a row of units, [embedding, layer 0 .. L-1,
// head], cut into `stages` contiguous runs; stage 0 starts with the embedding (its input is the token
// ids), the last ends with the head, whose work (final norm, output head, MTP, losses) runs in the loss.
// Each stage adds the sequence-wise balance loss of its own MoE layers to the objective through an
// identity node on its output, so that loss's gradient flows in the stage's own backward.
import { crossEntropy, narrow, record, type Parameter, type Tensor } from '@dsv3/core';
import { runDecoderLayer, type DecoderLayer, type DeepseekV3ForCausalLM } from '@dsv3/model';
import { MoE, sequenceBalanceLossT } from '@dsv3/moe';
import { mtpLoss } from '@dsv3/mtp';
import type { PipelineStage } from '@dsv3/parallel';

/** What the stages of one micro-batch add up (for reporting; the gradients flow through the graph). */
export interface StageLosses {
  total: number;
  main: number;
  mtp: number;
  balance: number;
  hasMtp: boolean;
}

export interface StageOptions {
  /** Weight of each micro-batch's loss in the step's objective (micro-batch sequences / step sequences). */
  share: number;
  mtpLambda: number;
  seqAuxAlpha: number;
  /** Sequences per micro-batch (the balance loss is per sequence). */
  microBatch: number;
  /** Where the stages add their losses' values. */
  sums: StageLosses;
}

/** Units [first, last) of each of `stages` stages over L layers (units: embedding, L layers, head). */
export function stageUnits(layers: number, stages: number): [number, number][] {
  const U = layers + 2;
  if (!Number.isInteger(stages) || stages < 1 || stages > U)
    throw new Error(`cannot split ${layers} layers (+ embedding and head) into ${stages} pipeline stages`);
  return Array.from({ length: stages }, (_, s) => [Math.floor((s * U) / stages), Math.floor(((s + 1) * U) / stages)]);
}

/** Adds `extra` (a scalar) to the objective without changing `h`. */
function withLoss(h: Tensor, extra: Tensor): Tensor {
  const out = h.detach();
  return record(out, 'pipeline.addLoss', [h, extra], (g) => [g, extra.onesLike()]);
}

class ModelStage implements PipelineStage {
  constructor(
    private readonly model: DeepseekV3ForCausalLM,
    private readonly layers: DecoderLayer[],
    private readonly embeds: boolean,
    private readonly o: StageOptions,
  ) {}

  async forward(x: Tensor): Promise<Tensor> {
    let h = this.embeds ? this.model.model.embedTokens.forward(x) : x;
    let balance: Tensor | null = null;
    for (const layer of this.layers) {
      h = await runDecoderLayer(layer, h, { startPos: 0 });
      balance = addBalance(balance, layer, this.o);
    }
    if (!balance) return h;
    const v = balance.dataSync()[0]! * this.o.share;
    this.o.sums.balance += v;
    this.o.sums.total += v;
    return withLoss(h, balance.mul(this.o.share));
  }

  parameters(): Parameter[] {
    return [
      ...(this.embeds ? this.model.model.embedTokens.parameters() : []),
      ...this.layers.flatMap((l) => l.parameters()),
    ];
  }
}

function addBalance(acc: Tensor | null, layer: DecoderLayer, o: StageOptions): Tensor | null {
  if (!(o.seqAuxAlpha > 0) || !(layer.mlp instanceof MoE)) return acc;
  const r = layer.mlp.lastRouting;
  if (!r || r.numTokens === 0) return acc;
  const l = sequenceBalanceLossT(r.scores, r.indices, { alpha: o.seqAuxAlpha, seqLen: r.numTokens / o.microBatch });
  return acc ? acc.add(l) : l;
}

/** The stages of the model, by stage index. */
export function modelStages(model: DeepseekV3ForCausalLM, stages: number, o: StageOptions): PipelineStage[] {
  const L = model.config.numHiddenLayers;
  const layers = [...model.model.layers.items];
  return stageUnits(L, stages).map(
    ([a, b]) => new ModelStage(model, layers.slice(Math.max(a, 1) - 1, Math.min(b, L + 1) - 1), a === 0, o),
  );
}

/**
 * The objective of one micro-batch from the last stage's output h (the head unit): next-token CE,
 * λ·MTP and the MTP layers' balance loss, times the micro-batch's share. Same terms as microLoss().
 */
export async function headLoss(model: DeepseekV3ForCausalLM, h: Tensor, ids: Tensor, o: StageOptions): Promise<Tensor> {
  const S = ids.shape[1]!;
  const logits = model.lmHead.forward(model.model.norm.forward(h));
  const main = crossEntropy(narrow(logits, 1, 0, S - 1), narrow(ids, 1, 1, S - 1));
  let total = main;
  o.sums.main += main.dataSync()[0]! * o.share;
  if (o.mtpLambda > 0 && model.mtp.length > 0) {
    const mtpLogits: Tensor[] = [];
    let hp = h;
    let balance: Tensor | null = null;
    for (const [k, m] of model.mtp.items.entries()) {
      const n = S - k - 1; // depth k sees h^{k-1}_i and token t_{i+k+1} (as the model's forward)
      if (n <= 0) break;
      const block = m.block as DecoderLayer;
      hp = await runDecoderLayer(block, m.combine(narrow(hp, 1, 0, n), narrow(ids, 1, k + 1, n)), { startPos: 0 });
      balance = addBalance(balance, block, o);
      mtpLogits.push(m.logits(hp));
    }
    const r = mtpLoss(mtpLogits, ids, { lambda: o.mtpLambda });
    total = total.add(r.loss);
    o.sums.mtp += (r.perDepth.reduce((a, b) => a.add(b)).dataSync()[0]! / r.perDepth.length) * o.share;
    o.sums.hasMtp = true;
    if (balance) {
      total = total.add(balance);
      o.sums.balance += balance.dataSync()[0]! * o.share;
    }
  }
  o.sums.total += total.dataSync()[0]! * o.share;
  return total.mul(o.share);
}
