// A child process of the start-up memory test (and of bench/startup-memory.ts): builds one rank's model
// of LAYOUT (SCHEDULE) for a mid-size MoE config (or the preset PRESET), either the whole model (MODE=whole, what a rank did before sharded start-up)
// or only the rank's shards (MODE=rank), and prints the growth of its peak RSS over the build and
// the bytes the rank's build gave values.
import { DeepseekV3ForCausalLM, parseConfig } from '@dsv3/model';
import { ParallelLayout, type ScheduleKind } from '@dsv3/parallel';
import { PRESET_MODELS, type TrainPreset } from '../../src/index.js';
import { initRankModel } from '../../src/parallel/index.js';
import { midConfig } from '../startup-common.js';

const preset = process.env.PRESET as TrainPreset | undefined;
const config = preset ? parseConfig({ ...PRESET_MODELS[preset] }) : midConfig();
const before = process.memoryUsage().rss;
const layout = ParallelLayout.parse(process.env.LAYOUT!);
const rank = Number(process.env.RANK_INDEX);
const built =
  process.env.MODE === 'whole'
    ? { model: new DeepseekV3ForCausalLM(config, { seed: 3 }), materializedBytes: null }
    : initRankModel(config, { seed: 3 }, { layout, rank, schedule: process.env.SCHEDULE as ScheduleKind });
const peak = process.resourceUsage().maxRSS * 1024;
console.log(
  JSON.stringify({
    growth: peak - before,
    parameters: built.model.numParameters(),
    materializedBytes: built.materializedBytes,
  }),
);
