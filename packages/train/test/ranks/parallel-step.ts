// A rank of the parallel-step equality test: trains the tiny preset (f64) for STEPS steps on the layout
// in PARALLEL (e.g. dp=2,pp=2,ep=2; RANKS_PER_NODE splits the ranks into nodes) once per pipeline schedule in SCHEDULES, ZeRO-1 when ZERO=1;
// reports per schedule the step results, the parameters it writes (those it is the first holder of:
// together the ranks' parts are the whole model), the bytes of parameters it holds and the bytes its
// start-up gave memory (it builds only its own shards). FB_OVERLAP=0 runs DualPipe's FB pairs back to
// back instead of concurrently; SKEW_MS makes EP rank 0 wait that long
// at the top of each MoE layer's backward (an identity node), so in an FB pair its forward stream calls
// its all-to-all before the backward stream does, while on EP rank 1 the backward's comes first.
// FIRST_DENSE overrides the preset's first_k_dense_replace.
import { setTimeout as sleep } from 'node:timers/promises';
import { cpuData } from '@dsv3/core';
import { initProcessGroup, recordAsync, ParallelLayout, reportResult, type ScheduleKind } from '@dsv3/parallel';
import { heldParameterBytes, isFirstHolder, parallelTrainStep, setupParallel } from '../../src/parallel/index.js';
import { OPTIMIZER, STEPS, paramGroups, stepInputs, tinyF64Rank } from '../parallel-common.js';

const world = await initProcessGroup({ timeoutMs: 240_000 });
const rpn = process.env.RANKS_PER_NODE;
const layout = ParallelLayout.parse(process.env.PARALLEL!, rpn ? { ranksPerNode: Number(rpn) } : {});
const out: Record<string, unknown> = {};

const skewMs = Number(process.env.SKEW_MS ?? 0);
// FIRST_DENSE=0: every layer a MoE layer (the preset's first is dense), so every pipeline stage communicates
const configOverrides = process.env.FIRST_DENSE ? { first_k_dense_replace: Number(process.env.FIRST_DENSE) } : {};
for (const schedule of (process.env.SCHEDULES ?? '1f1b').split(',') as ScheduleKind[]) {
  // Built as a rank does: only its shards get memory.
  const { model, materializedBytes } = tinyF64Rank({ layout, rank: world.rank, schedule }, configOverrides);
  model.train();
  const run = setupParallel({
    world,
    layout,
    model,
    paramGroups: paramGroups(model),
    optimizer: OPTIMIZER,
    zero1: process.env.ZERO === '1',
    schedule,
    overlapForwardBackward: process.env.FB_OVERLAP !== '0',
  });
  if (skewMs > 0 && run.groups.ep.rank === 0)
    for (const h of run.ep) {
      const f = h.moe.distributed!;
      h.moe.distributed = async (x, o) => {
        const y = await f(x, o);
        return recordAsync(y.detach(), 'test.skew', [y], async (g) => {
          await sleep(skewMs);
          return [g];
        });
      };
    }
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
  out[schedule] = {
    results,
    params,
    heldBytes: heldParameterBytes(model),
    materializedBytes,
    grads,
  };
  for (const h of run.ep) h.detach();
}
reportResult(out);
await world.destroy();
