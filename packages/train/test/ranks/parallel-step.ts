// A rank of the parallel-step equality test: trains the tiny preset (f64) for STEPS steps on the layout
// in PARALLEL (e.g. dp=2,ep=2), ZeRO-1 when ZERO=1; rank 0 reports losses and final parameters.
import { initProcessGroup, ParallelLayout, reportResult } from '@dsv3/parallel';
import { parallelTrainStep, setupParallel } from '../../src/parallel/index.js';
import { OPTIMIZER, STEPS, flatParams, paramGroups, stepInputs, tinyF64 } from '../parallel-common.js';

const world = await initProcessGroup({ timeoutMs: 240_000 });
const layout = ParallelLayout.parse(process.env.PARALLEL!);
const model = tinyF64();
model.train();
const run = setupParallel({ world, layout, model, paramGroups: paramGroups(model), optimizer: OPTIMIZER, zero1: process.env.ZERO === '1' });
const results = [];
for (let s = 0; s < STEPS; s++) results.push(await parallelTrainStep(run, stepInputs(s, Number(process.env.MICRO ?? 1))));
reportResult(world.rank === 0 ? { results, params: flatParams(model) } : { results });
await world.destroy();
