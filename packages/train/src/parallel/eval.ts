// Evaluation on a sharded layout: no rank holds the whole model, so the evaluation batches go through
// the pipeline's stages in order, each stage run by the first pipeline rank holding it (the activations
// passed on point-to-point), every rank of a stage evaluating the same sequences (the MoE layers
// dispatch over the EP group as in training). The loss is the last stage's, broadcast to every rank.
import { crossEntropy, narrow, noGradAsync, type Tensor } from '@dsv3/core';
import { stageHolders } from '@dsv3/parallel';
import { batchTensor } from '../step.js';
import { groupPointToPoint } from './p2p.js';
import { modelStages } from './stages.js';
import type { ParallelRun } from './step.js';

export async function parallelEvaluate(
  run: ParallelRun,
  seqs: readonly Int32Array[],
  microBatch: number,
): Promise<{ loss: number; tokens: number }> {
  const { model, groups } = run;
  const P = groups.pp.size;
  const runner = stageHolders(run.schedule, P).map((h) => h[0]!);
  const me = groups.pp.rank;
  const p2p = groupPointToPoint(groups.pp);
  const sums = { total: 0, main: 0, mtp: 0, balance: 0, hasMtp: false };
  const stages = modelStages(model, runner.length, { share: 0, mtpLambda: 0, seqAuxAlpha: 0, microBatch, sums });
  model.eval();
  let sum = 0;
  let count = 0;
  try {
    for (let i = 0; i < seqs.length; i += microBatch) {
      const batch = seqs.slice(i, i + microBatch);
      const ids = batchTensor(batch, model.backend);
      const S = ids.shape[1]!;
      const loss = await noGradAsync(async () => {
        let h: Tensor | null = null;
        for (const [s, stage] of stages.entries()) {
          if (runner[s] !== me) continue;
          const input = s === 0 ? ids : (h ?? (await p2p.recv(runner[s - 1]!)));
          h = await stage.forward(input);
          if (s + 1 < stages.length && runner[s + 1] !== me) {
            await p2p.send(h, runner[s + 1]!);
            h = null;
          }
        }
        if (runner.at(-1) !== me) return 0;
        const logits = model.lmHead.forward(model.model.norm.forward(h!));
        return crossEntropy(narrow(logits, 1, 0, S - 1), narrow(ids, 1, 1, S - 1)).item();
      });
      const t = batch.length * (S - 1);
      sum += loss * t;
      count += t;
    }
  } finally {
    model.train();
  }
  const last = groups.layout.rankOf({ tp: 0, ep: 0, dp: 0, pp: runner.at(-1)! });
  const got = await groups.world.broadcast(Float64Array.of(sum), last).wait();
  return { loss: count ? got[0]! / count : Number.NaN, tokens: count };
}
