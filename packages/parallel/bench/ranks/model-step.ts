// One rank of the validation job: a DeepSeek-V3-shaped preset split into pipeline stages by layers,
// `reps` timed training steps (forward + backward, no optimizer) under the schedule named in argv.
// Reports each step's wall time (between barriers) and its compute time.
import { crossEntropy, div, reshape, tensor, type Parameter, type Tensor } from '@dsv3/core';
import { DeepseekV3ForCausalLM, presetConfig, type PresetName } from '@dsv3/model';
import {
  buildSchedule,
  groupPointToPoint,
  initProcessGroup,
  reportResult,
  runPipelineStep,
  type PipelineStage,
  type ScheduleKind,
} from '@dsv3/parallel';
// Bench-only: one GEMM thread per rank, so ranks do not oversubscribe the cores.
import { setGemmThreads } from '../../../core/src/cpu/gemm/index.js';

const [preset, kind, chunksArg, seqArg, repsArg] = process.argv.slice(2) as [
  PresetName,
  ScheduleKind,
  string,
  string,
  string,
];
const chunks = Number(chunksArg);
const seq = Number(seqArg);
const reps = Number(repsArg);
setGemmThreads(1);
const config = { ...presetConfig(preset), numNextnPredictLayers: 0 };
const pg = await initProcessGroup({ timeoutMs: 600_000 });
const s = buildSchedule(kind, { ranks: pg.size, chunks });
const model = new DeepseekV3ForCausalLM(config, { seed: 1, std: 0.02 });

function stageOf(stage: number): PipelineStage {
  const L = config.numHiddenLayers;
  const layers = [...model.model.layers].slice(
    Math.floor((stage * L) / s.stages),
    Math.floor(((stage + 1) * L) / s.stages),
  );
  const first = stage === 0;
  const last = stage === s.stages - 1;
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
const stages = new Map(s.rankStages[pg.rank]!.map((st) => [st, stageOf(st)]));
const ids = (m: number): Tensor =>
  tensor(
    Array.from({ length: seq }, (_, i) => (31 * m + 7 * i + 1) % config.vocabSize),
    { shape: [1, seq], dtype: 'i32' },
  );
const targets = (m: number): Tensor =>
  tensor(
    Array.from({ length: seq }, (_, i) => (31 * m + 7 * i + 8) % config.vocabSize),
    { dtype: 'i32' },
  );
const comm = groupPointToPoint(pg);
const steps: { wall: number; compute: number }[] = [];
for (let r = 0; r <= reps; r++) {
  for (const st of stages.values()) for (const p of st.parameters()) p.grad = null;
  await pg.barrier().wait();
  const t0 = performance.now();
  const res = await runPipelineStep({
    schedule: s,
    comm,
    stages,
    input: ids,
    loss: (o, m) => div(crossEntropy(reshape(o, [seq, config.vocabSize]), targets(m)), chunks),
  });
  await pg.barrier().wait();
  if (r > 0) steps.push({ wall: performance.now() - t0, compute: res.trace.reduce((a, t) => a + t.end - t.start, 0) });
}
const result = { rank: pg.rank, steps };
await pg.destroy();
if (!reportResult(result)) console.log(`DSV3_RESULT ${JSON.stringify(result)}`);
