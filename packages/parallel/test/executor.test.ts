import { Linear, Module, RMSNorm, add, backward, crossEntropy, div, silu, tensor, type Tensor } from '@dsv3/core';
import { randomTensor64, relativeError } from '@dsv3/core/testing';
import { describe, expect, it } from 'vitest';
import {
  buildSchedule,
  inMemoryChannels,
  runPipelineStep,
  splitBackward,
  syncReplicaGradients,
  type ScheduleKind,
} from '../src/index.js';

const D = 8;
const VOCAB = 5;

/** A residual MLP block; the last stage adds a head. Seeded by stage index so every copy is identical. */
class Stage extends Module {
  readonly norm: RMSNorm;
  readonly up: Linear;
  readonly down: Linear;
  readonly head: Linear | null;
  constructor(stage: number, last: boolean) {
    super();
    const o = { dtype: 'f64' as const, seed: 100 + stage };
    this.norm = this.child('norm', new RMSNorm(D, 1e-6, { dtype: 'f64' }));
    this.up = this.child('up', new Linear(D, 2 * D, { ...o, bias: true }));
    this.down = this.child('down', new Linear(2 * D, D, { ...o, seed: 200 + stage }));
    this.head = last ? this.child('head', new Linear(D, VOCAB, { ...o, seed: 300 })) : null;
  }
  forward(x: Tensor): Tensor {
    const y = add(x, this.down.forward(silu(this.up.forward(this.norm.forward(x)))));
    return this.head ? this.head.forward(y) : y;
  }
}

// Ragged micro-batches: 2, 3, 4, 2, 3, 4... rows.
const rows = (m: number): number => 2 + (m % 3);
const inputOf = (m: number): Tensor => randomTensor64([rows(m), D], 1000 + m);
const targetsOf = (m: number): Tensor =>
  tensor(
    Array.from({ length: rows(m) }, (_, i) => (i * 3 + m) % VOCAB),
    { dtype: 'i32' },
  );

function reference(stages: number, chunks: number): { losses: number[]; grads: Float64Array[][] } {
  const model = Array.from({ length: stages }, (_, s) => new Stage(s, s === stages - 1));
  const losses: number[] = [];
  for (let m = 0; m < chunks; m++) {
    let x = inputOf(m);
    for (const st of model) x = st.forward(x);
    const loss = div(crossEntropy(x, targetsOf(m)), chunks);
    losses.push(loss.dataSync()[0]!);
    backward(loss);
  }
  return { losses, grads: model.map((st) => st.parameters().map((p) => Float64Array.from(p.grad!.dataSync()))) };
}

async function pipelined(kind: ScheduleKind, ranks: number, chunks: number) {
  const s = buildSchedule(kind, { ranks, chunks });
  const comms = inMemoryChannels(ranks);
  const held = s.rankStages.map((sts) => new Map(sts.map((st) => [st, new Stage(st, st === s.stages - 1)])));
  const results = await Promise.all(
    comms.map((comm, r) =>
      runPipelineStep({
        schedule: s,
        comm,
        stages: held[r]!,
        input: inputOf,
        loss: (out, m) => div(crossEntropy(out, targetsOf(m)), chunks),
      }),
    ),
  );
  await Promise.all(comms.map((comm, r) => syncReplicaGradients(s, comm, held[r]!)));
  const losses = new Map<number, number>();
  for (const r of results) for (const [m, l] of r.losses) losses.set(m, l);
  return { s, held, losses };
}

describe('splitBackward', () => {
  it('B gives the input gradient and leaves weights untouched until W; B+W equals one full backward', () => {
    const make = () => new Stage(0, true);
    const full = make();
    const x0 = randomTensor64([3, D], 7).requireGrad();
    backward(div(crossEntropy(full.forward(x0), targetsOf(1)), 1));
    const split = make();
    const x1 = randomTensor64([3, D], 7).requireGrad();
    const r = splitBackward(crossEntropy(split.forward(x1), targetsOf(1)), undefined, x1, true);
    expect(split.parameters().every((p) => p.grad === null)).toBe(true);
    expect(relativeError(r.inputGrad!.dataSync(), x0.grad!.dataSync())).toBeLessThan(1e-14);
    r.weights();
    split
      .parameters()
      .forEach((p, i) =>
        expect(relativeError(p.grad!.dataSync(), full.parameters()[i]!.grad!.dataSync())).toBeLessThan(1e-14),
      );
    expect(() => r.weights()).toThrow(/already ran/);
  });
});

describe('runPipelineStep (in-memory channels, f64)', () => {
  // Every schedule must give the unsplit model's losses and gradients: the only difference is the order
  // in which micro-batch gradients (and DualPipe's two copies) are summed, so f64 agrees to ~1e-15.
  const TOL = 1e-12;
  const cases: [ScheduleKind, number, number][] = [
    ['gpipe', 3, 4],
    ['1f1b', 4, 6],
    ['zb1p', 4, 7],
    ['dualpipe', 4, 8],
    ['dualpipe', 2, 6],
    ['dualpipev', 2, 5],
    ['dualpipev', 3, 7],
  ];
  for (const [kind, ranks, chunks] of cases) {
    it(`${kind} on ${ranks} ranks, ${chunks} ragged micro-batches equals the unsplit model`, async () => {
      const { s, held, losses } = await pipelined(kind, ranks, chunks);
      const ref = reference(s.stages, chunks);
      expect([...losses.keys()].sort((a, b) => a - b)).toEqual(ref.losses.map((_, m) => m));
      for (const [m, l] of losses)
        expect(Math.abs(l - ref.losses[m]!)).toBeLessThanOrEqual(TOL * Math.abs(ref.losses[m]!));
      for (let st = 0; st < s.stages; st++) {
        for (const r of s.stageOwners[st]!) {
          const params = held[r]!.get(st)!.parameters();
          params.forEach((p, i) =>
            expect(
              relativeError(p.grad!.dataSync(), ref.grads[st]![i]!),
              `stage ${st} rank ${r} param ${i}`,
            ).toBeLessThan(TOL),
          );
        }
      }
    });
  }

  it('rejects a rank missing a stage and a communicator of the wrong size', async () => {
    const s = buildSchedule('1f1b', { ranks: 2, chunks: 2 });
    const [c0] = inMemoryChannels(2);
    await expect(
      runPipelineStep({ schedule: s, comm: c0!, stages: new Map(), input: inputOf, loss: (o) => o }),
    ).rejects.toThrow(/stage 0 is missing/);
    const [w0] = inMemoryChannels(3);
    await expect(
      runPipelineStep({
        schedule: s,
        comm: w0!,
        stages: new Map([[0, new Stage(0, false)]]),
        input: inputOf,
        loss: (o) => o,
      }),
    ).rejects.toThrow(/communicator has 3 ranks, the 1f1b schedule 2/);
  });
});
