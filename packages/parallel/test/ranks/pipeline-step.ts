// Run by every rank of a pipeline job (any transport): one training step of a residual-MLP model split
// into stages under the schedule named in argv, over the ProcessGroup; each rank checks its stages'
// gradients and its losses against the unsplit model, which it recomputes itself (f64).
import { Linear, Module, RMSNorm, add, backward, crossEntropy, div, silu, tensor, type Tensor } from '@dsv3/core';
import { randomTensor64, relativeError } from '@dsv3/core/testing';
import {
  buildSchedule,
  groupPointToPoint,
  initProcessGroup,
  reportResult,
  runPipelineStep,
  syncReplicaGradients,
  type ScheduleKind,
} from '@dsv3/parallel';

const D = 8;
const kind = process.argv[2] as ScheduleKind;
const chunks = Number(process.argv[3]);

class Stage extends Module {
  readonly norm = this.child('norm', new RMSNorm(D, 1e-6, { dtype: 'f64' }));
  readonly up: Linear;
  readonly down: Linear;
  readonly head: Linear | null;
  constructor(stage: number, last: boolean) {
    super();
    this.up = this.child('up', new Linear(D, 2 * D, { dtype: 'f64', seed: 100 + stage, bias: true }));
    this.down = this.child('down', new Linear(2 * D, D, { dtype: 'f64', seed: 200 + stage }));
    this.head = last ? this.child('head', new Linear(D, 5, { dtype: 'f64', seed: 300 })) : null;
  }
  forward(x: Tensor): Tensor {
    const y = add(x, this.down.forward(silu(this.up.forward(this.norm.forward(x)))));
    return this.head ? this.head.forward(y) : y;
  }
}
const rows = (m: number): number => 2 + (m % 3);
const inputOf = (m: number): Tensor => randomTensor64([rows(m), D], 1000 + m);
const targetsOf = (m: number): Tensor =>
  tensor(
    Array.from({ length: rows(m) }, (_, i) => (i * 3 + m) % 5),
    { dtype: 'i32' },
  );
const lossOf = (out: Tensor, m: number): Tensor => div(crossEntropy(out, targetsOf(m)), chunks);

const pg = await initProcessGroup({ timeoutMs: 180_000 });
const s = buildSchedule(kind, { ranks: pg.size, chunks });
const comm = groupPointToPoint(pg);
const stages = new Map(s.rankStages[pg.rank]!.map((st) => [st, new Stage(st, st === s.stages - 1)]));
// PIPELINE_FAIL_RANK: that rank dies in the middle of the step (its third forward).
let forwards = 0;
if (Number(process.env.PIPELINE_FAIL_RANK ?? -1) === pg.rank) {
  for (const st of stages.values()) {
    const f = st.forward.bind(st);
    st.forward = (x) => {
      if (++forwards === 3) process.exit(3);
      return f(x);
    };
  }
}
let losses: Map<number, number>;
try {
  ({ losses } = await runPipelineStep({ schedule: s, comm, stages, input: inputOf, loss: lossOf }));
  await syncReplicaGradients(s, comm, stages);
} catch (e) {
  const result = { rank: pg.rank, error: (e as Error).message };
  if (!reportResult(result)) console.log(`DSV3_RESULT ${JSON.stringify(result)}`);
  process.exit(1);
}

const ref = Array.from({ length: s.stages }, (_, st) => new Stage(st, st === s.stages - 1));
const refLoss: number[] = [];
for (let m = 0; m < chunks; m++) {
  let x = inputOf(m);
  for (const st of ref) x = st.forward(x);
  const loss = lossOf(x, m);
  refLoss.push(loss.dataSync()[0]!);
  backward(loss);
}
let maxGradError = 0;
for (const [st, mod] of stages) {
  mod
    .parameters()
    .forEach(
      (p, i) =>
        (maxGradError = Math.max(
          maxGradError,
          relativeError(p.grad!.dataSync(), ref[st]!.parameters()[i]!.grad!.dataSync()),
        )),
    );
}
let maxLossError = 0;
for (const [m, l] of losses) maxLossError = Math.max(maxLossError, Math.abs(l - refLoss[m]!) / Math.abs(refLoss[m]!));
const result = { rank: pg.rank, stages: [...stages.keys()], losses: [...losses.keys()], maxGradError, maxLossError };
await pg.destroy();
if (!reportResult(result)) console.log(`DSV3_RESULT ${JSON.stringify(result)}`);
