// A rank of the recompute-under-parallelism test: one training step of the tiny preset (f32) on the
// layout in PARALLEL with SCHEDULE, once plain and once with selective recomputation, from the same
// weights; reports how many gradient and parameter values of this rank differ between the two.
import { applyRecompute } from '../../src/index.js';
import { initProcessGroup, ParallelLayout, reportResult, type ScheduleKind } from '@dsv3/parallel';
import { parseConfig } from '@dsv3/model';
import { PRESET_MODELS } from '../../src/index.js';
import { initRankModel, parallelTrainStep, setupParallel } from '../../src/parallel/index.js';
import { OPTIMIZER, paramGroups, stepInputs } from '../parallel-common.js';

const world = await initProcessGroup({ timeoutMs: 240_000 });
const layout = ParallelLayout.parse(process.env.PARALLEL!);
const schedule = (process.env.SCHEDULE ?? '1f1b') as ScheduleKind;

async function step(recompute: boolean) {
  const { model } = initRankModel(
    parseConfig({ ...PRESET_MODELS.tiny }),
    { seed: 7 },
    { layout, rank: world.rank, schedule },
  );
  if (recompute) applyRecompute(model);
  model.train();
  const run = setupParallel({
    world,
    layout,
    model,
    paramGroups: paramGroups(model),
    optimizer: OPTIMIZER,
    zero1: false,
    schedule,
  });
  const r = await parallelTrainStep(run, stepInputs(0, Number(process.env.MICRO ?? 1)));
  for (const h of run.ep) h.detach();
  return {
    loss: r.loss,
    values: run.plan.held.map(([n, p]) => [n, p.grad!.dataSync(), p.value.dataSync()] as const),
  };
}

const plain = await step(false);
const re = await step(true);
let grads = 0;
let params = 0;
let count = 0;
re.values.forEach(([name, g, v], i) => {
  const [n0, g0, v0] = plain.values[i]!;
  if (n0 !== name) throw new Error(`parameter order differs: ${name} vs ${n0}`);
  for (let k = 0; k < g.length; k++) {
    if (g[k] !== g0[k]) grads++;
    if (v[k] !== v0[k]) params++;
  }
  count += g.length;
});
reportResult({ lossPlain: plain.loss, lossRecompute: re.loss, gradsDiffering: grads, paramsDiffering: params, count });
await world.destroy();
