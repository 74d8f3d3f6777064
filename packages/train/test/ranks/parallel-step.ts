// A rank of the parallel-step equality test: trains the tiny preset (f64) for STEPS steps on the layout
// in PARALLEL (e.g. dp=2,pp=2,ep=2; RANKS_PER_NODE splits the ranks into nodes) once per pipeline schedule in SCHEDULES, ZeRO-1 when ZERO=1;
// reports per schedule the step results, the parameters it writes (those it is the first holder of:
// together the ranks' parts are the whole model), the bytes of parameters it holds and the bytes its
// start-up gave memory (it builds only its own shards).
import { cpuData, initProcessGroup, ParallelLayout, reportResult, type ScheduleKind } from '@dsv3/parallel';
import { heldParameterBytes, isFirstHolder, parallelTrainStep, setupParallel } from '../../src/parallel/index.js';
import { OPTIMIZER, STEPS, paramGroups, stepInputs, tinyF64Rank } from '../parallel-common.js';

const world = await initProcessGroup({ timeoutMs: 240_000 });
const rpn = process.env.RANKS_PER_NODE;
const layout = ParallelLayout.parse(process.env.PARALLEL!, rpn ? { ranksPerNode: Number(rpn) } : {});
const out: Record<string, unknown> = {};
for (const schedule of (process.env.SCHEDULES ?? '1f1b').split(',') as ScheduleKind[]) {
  // Built as a rank does: only its shards get memory.
  const { model, materializedBytes } = tinyF64Rank({ layout, rank: world.rank, schedule });
  model.train();
  const run = setupParallel({
    world,
    layout,
    model,
    paramGroups: paramGroups(model),
    optimizer: OPTIMIZER,
    zero1: process.env.ZERO === '1',
    schedule,
  });
  const results = [];
  for (let s = 0; s < STEPS; s++)
    results.push(await parallelTrainStep(run, stepInputs(s, Number(process.env.MICRO ?? 1))));
  const params = Object.fromEntries(
    run.plan.held.filter(([n]) => isFirstHolder(run.plan, n)).map(([n, p]) => [n, p.value.dataSync() as Float64Array]),
  );
  // every gradient the step left is a slice of its holder bucket's flat array (accumulated in place there)
  const inBucket = run.buckets.flatMap((b) =>
    b.params.filter((p) => p.grad).map((p) => cpuData(p.grad!)?.buffer === b.grads?.buffer),
  );
  const grads = { inBucket: inBucket.filter(Boolean).length, all: inBucket.length };
  out[schedule] = { results, params, heldBytes: heldParameterBytes(model), materializedBytes, grads };
  for (const h of run.ep) h.detach();
}
reportResult(out);
await world.destroy();
