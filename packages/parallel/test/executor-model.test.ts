// The pipeline executor on the real network: tiny-v3 (MLA attention, DeepSeekMoE layers, RMSNorm)
// split into stages by layers, every schedule against the unsplit model.
import { backward, crossEntropy, div, reshape, tensor, type Parameter, type Tensor } from '@dsv3/core';
import { relativeError } from '@dsv3/core/testing';
import { DeepseekV3ForCausalLM, presetConfig } from '@dsv3/model';
import { describe, expect, it } from 'vitest';
import {
  buildSchedule,
  inMemoryChannels,
  runPipelineStep,
  syncReplicaGradients,
  type PipelineStage,
  type ScheduleKind,
} from '../src/index.js';

const config = { ...presetConfig('tiny-v3'), numNextnPredictLayers: 0 };
const SEQ = 6;
const makeModel = (): DeepseekV3ForCausalLM => new DeepseekV3ForCausalLM(config, { seed: 5, std: 0.02 });
const idsOf = (m: number): Tensor =>
  tensor(
    Array.from({ length: SEQ }, (_, i) => (37 * m + 11 * i + 3) % config.vocabSize),
    { shape: [1, SEQ], dtype: 'i32' },
  );
const targetsOf = (m: number): Tensor =>
  tensor(
    Array.from({ length: SEQ }, (_, i) => (37 * m + 11 * i + 14) % config.vocabSize),
    { dtype: 'i32' },
  );

/** Layers [from, to) of `model`; the first stage embeds, the last applies the final norm and head. */
function stageOf(model: DeepseekV3ForCausalLM, stage: number, stages: number): PipelineStage {
  const L = config.numHiddenLayers;
  const from = Math.floor((stage * L) / stages);
  const to = Math.floor(((stage + 1) * L) / stages);
  const layers = [...model.model.layers].slice(from, to);
  const first = stage === 0;
  const last = stage === stages - 1;
  return {
    forward(x: Tensor): Tensor {
      let h = first ? model.model.embedTokens.forward(x) : x;
      for (const layer of layers) h = layer.forward(h, { startPos: 0 });
      return last ? model.lmHead.forward(model.model.norm.forward(h)) : h;
    },
    parameters(): Parameter[] {
      return [
        ...(first ? model.model.embedTokens.parameters() : []),
        ...layers.flatMap((l) => l.parameters()),
        ...(last ? [...model.model.norm.parameters(), ...model.lmHead.parameters()] : []),
      ];
    },
  };
}

const lossOf = (logits: Tensor, m: number, chunks: number): Tensor =>
  div(crossEntropy(reshape(logits, [SEQ, config.vocabSize]), targetsOf(m)), chunks);

describe('runPipelineStep on tiny-v3', () => {
  // f32 parameters: gradients are sums over micro-batches (and DualPipe's two copies) taken in another
  // order than the reference's, so they agree to f32 rounding of those sums (observed ≤ 5.4e-8); 2e-6
  // leaves room for longer sums, and any real mistake (a missing or doubled chunk) is ≥ 1e-1.
  const TOL = 2e-6;
  const cases: [ScheduleKind, number, number][] = [
    ['1f1b', 2, 3],
    ['zb1p', 4, 4],
    ['dualpipe', 2, 4],
    ['dualpipev', 2, 4],
  ];
  for (const [kind, ranks, chunks] of cases) {
    it(`${kind} on ${ranks} ranks equals the unsplit model's losses and gradients`, { timeout: 240_000 }, async () => {
      const s = buildSchedule(kind, { ranks, chunks });
      const ref = makeModel();
      const refLosses: number[] = [];
      for (let m = 0; m < chunks; m++) {
        const loss = lossOf(ref.forward(idsOf(m)).logits, m, chunks);
        refLosses.push(loss.dataSync()[0]!);
        backward(loss);
      }
      const refStages = Array.from({ length: s.stages }, (_, st) => stageOf(ref, st, s.stages));
      // One model per rank (DualPipe: each rank's two stages come from its own copy of the weights).
      const held = s.rankStages.map((sts) => {
        const copy = makeModel();
        return new Map(sts.map((st) => [st, stageOf(copy, st, s.stages)]));
      });
      const comms = inMemoryChannels(ranks);
      const results = await Promise.all(
        comms.map((comm, r) =>
          runPipelineStep({ schedule: s, comm, stages: held[r]!, input: idsOf, loss: (o, m) => lossOf(o, m, chunks) }),
        ),
      );
      await Promise.all(comms.map((comm, r) => syncReplicaGradients(s, comm, held[r]!)));
      for (const r of results) for (const [m, l] of r.losses) expect(l).toBe(refLosses[m]);
      expect(results.reduce((n, r) => n + r.losses.size, 0)).toBe(chunks);
      for (let st = 0; st < s.stages; st++) {
        const want = refStages[st]!.parameters();
        for (const r of s.stageOwners[st]!) {
          const got = held[r]!.get(st)!.parameters();
          expect(got.length).toBe(want.length);
          got.forEach((p, i) => {
            // An expert no token of the batch chose has no gradient in the reference; the copies' sum is zeros.
            if (!want[i]!.grad) return expect(p.grad === null || p.grad.dataSync().every((v) => v === 0)).toBe(true);
            expect(
              relativeError(p.grad!.dataSync(), want[i]!.grad!.dataSync()),
              `stage ${st} rank ${r} param ${i}`,
            ).toBeLessThan(TOL);
          });
        }
      }
    });
  }
});
