// A rank of the parallel-step equality test: trains the tiny preset (f64) for STEPS steps on the layout
// in PARALLEL (e.g. dp=2,pp=2,ep=2) once per pipeline schedule in SCHEDULES, ZeRO-1 when ZERO=1;
// reports per schedule the step results and (rank 0) the final parameters.
import { initProcessGroup, ParallelLayout, reportResult, type ScheduleKind } from '@dsv3/parallel';
import { parallelTrainStep, setupParallel } from '../../src/parallel/index.js';
import { OPTIMIZER, STEPS, flatParams, paramGroups, stepInputs, tinyF64 } from '../parallel-common.js';

const world = await initProcessGroup({ timeoutMs: 240_000 });
const layout = ParallelLayout.parse(process.env.PARALLEL!);
const out: Record<string, unknown> = {};
for (const schedule of (process.env.SCHEDULES ?? '1f1b').split(',') as ScheduleKind[]) {
  const model = tinyF64();
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
  out[schedule] = world.rank === 0 ? { results, params: flatParams(model) } : { results };
  for (const h of run.ep) h.detach();
}
reportResult(out);
await world.destroy();
