// Which layouts of the mini preset fit this machine (24 GiB for every rank together, worker-thread ranks
// in one process): the planner's memory accounting (@dsv3/parallel trainingMemory: V3's GPU precisions,
// bf16 weights + f32 gradients + f32 master + bf16 moments, recomputed activations) per rank, and this
// CPU trainer's own bytes for the parameters a rank holds (f32 weights, f32 gradients, bf16 moments:
// 12 bytes a parameter; activations come on top and are measured).
// Usage: npx tsx --conditions=@dsv3/source bench/mini-fit.ts [--seq-len 32] [--sequences 16] [--micro 1]
import { cpu } from '@dsv3/core';
import { DeepseekV3ForCausalLM, parseConfig } from '@dsv3/model';
import {
  buildSchedule,
  ParallelLayout,
  simulate,
  trainingMemory,
  type ScheduleKind,
  type TrainLayout,
} from '@dsv3/parallel';
import { PRESET_MODELS } from '../src/index.js';
import { rankKeeps } from '../src/parallel/index.js';

const arg = (name: string, def: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
};
const seqLen = arg('seq-len', 32);
const sequences = arg('sequences', 16);
const micro = arg('micro', 1);
const MACHINE = 24 * 2 ** 30;
const config = parseConfig({ ...PRESET_MODELS.mini });
const skeleton = cpu.deferUploads(() => new DeepseekV3ForCausalLM(config, { init: 'none' }));
const sizes = new Map(skeleton.namedParameters().map(([n, p]) => [n, p.value.size]));

const LAYOUTS: [string, ScheduleKind][] = [
  ['dp=1', '1f1b'],
  ['ep=2', '1f1b'],
  ['pp=2', '1f1b'],
  ['dp=2,ep=2', '1f1b'],
  ['pp=2,ep=2', 'dualpipe'],
  ['pp=2,ep=2', '1f1b'],
  ['pp=4', '1f1b'],
  ['dp=2,ep=4', '1f1b'],
  ['dp=2,pp=2,ep=2', 'dualpipe'],
  ['pp=4,ep=2', '1f1b'],
  ['pp=8', '1f1b'],
];

const GiB = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
console.log(
  `mini preset: ${seqLen}-token sequences, ${sequences} per step, micro-batch ${micro}; machine ${GiB(MACHINE)}`,
);
for (const [p, schedule] of LAYOUTS) {
  const layout = ParallelLayout.parse(p);
  const { dp, pp, ep } = layout.dims;
  const l: TrainLayout = { dp, pp, ep, tp: 1, schedule, zero1: false };
  const chunks = sequences / (dp * ep * micro);
  const sim = simulate(buildSchedule(schedule, { ranks: pp, chunks }));
  const w = { seqLen, globalBatch: sequences, microBatch: micro, maxNodesPerToken: null };
  const planner = trainingMemory(config, l, w, sim.peakActivations).total;
  let ours = 0;
  for (let rank = 0; rank < layout.worldSize; rank++) {
    const keep = rankKeeps(skeleton, { layout, rank, schedule });
    let params = 0;
    for (const [n, size] of sizes) if (keep(n)) params += size;
    ours += params * 12;
  }
  const n = layout.worldSize;
  console.log(
    `${String(n).padStart(2)} ranks ${`${p} ${pp > 1 ? schedule : ''}`.padEnd(24)} planner ${GiB(planner)}/rank, ${GiB(planner * n)} in all (${planner * n <= MACHINE ? 'fits' : 'does not fit'})   this trainer's parameter state ${GiB(ours)} in all (${ours <= MACHINE ? 'fits before activations' : 'does not fit'})`,
  );
}
