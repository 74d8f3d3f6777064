#!/usr/bin/env node
// dsv3-plan: predicts training and serving of a DeepSeek-V3-shaped model on a cluster, simulates
// pipeline schedules, and recomputes V3's published system numbers.
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { parseConfig, presetConfig, PRESETS, type ModelConfig, type PresetName } from '@dsv3/model';
import { buildSchedule } from '../pipeline/schedule.js';
import { simulate } from '../pipeline/simulate.js';
import { SCHEDULE_KINDS, type ScheduleKind } from '../pipeline/types.js';
import { CLUSTER_PRESETS, parseCluster, type ClusterSpec } from './cluster.js';
import { parseParallel } from './layout.js';
import { formatBubbles, formatServePlan, formatTrainPlan, formatV3, table } from './report.js';
import { planServing, V3_DECODE, V3_PREFILL } from './serve.js';
import { PlanError, planTraining } from './train.js';
import { bubbleTable, reproduceV3 } from './v3.js';

const readJson = (path: string, what: string): unknown => {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new InvalidArgumentError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
};

function loadModel(arg: string): ModelConfig {
  if (arg in PRESETS) return presetConfig(arg as PresetName);
  if (!arg.endsWith('.json'))
    throw new InvalidArgumentError(
      `unknown model '${arg}': a preset (${Object.keys(PRESETS).join(', ')}) or a config.json path`,
    );
  return parseConfig(readJson(arg, 'model config'));
}

function loadCluster(arg: string, efficiency?: number): ClusterSpec {
  const base =
    CLUSTER_PRESETS[arg] ?? (arg.endsWith('.json') ? parseCluster(readJson(arg, 'cluster description')) : undefined);
  if (!base)
    throw new InvalidArgumentError(
      `unknown cluster '${arg}': a preset (${Object.keys(CLUSTER_PRESETS).join(', ')}) or a cluster .json`,
    );
  return efficiency === undefined ? base : parseCluster({ ...base, computeEfficiency: efficiency });
}

const int = (s: string): number => {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`'${s}' is not a positive integer`);
  return n;
};
const num = (s: string): number => {
  const n = Number(s);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError(`'${s}' is not a non-negative number`);
  return n;
};
const kind = (s: string): ScheduleKind => {
  if (!SCHEDULE_KINDS.includes(s as ScheduleKind))
    throw new InvalidArgumentError(`'${s}' is not a schedule (${SCHEDULE_KINDS.join(', ')})`);
  return s as ScheduleKind;
};
const out = (json: boolean, data: unknown, text: () => string): void => {
  process.stdout.write(json ? `${JSON.stringify(data, null, 2)}\n` : `${text()}\n`);
};

const program = new Command('dsv3-plan').description(
  'Cluster planner for DeepSeek-V3-shaped models: training and serving predictions, pipeline schedules, V3 reproduction',
);

program
  .command('train')
  .description('predict one training step: time split, memory per GPU, tokens/s, MFU, GPU-hours per trillion tokens')
  .option('--model <preset|config.json>', 'model', 'deepseek-v3')
  .option('--cluster <preset|cluster.json>', 'cluster description', 'h800')
  .option('--parallel <spec>', 'layout dp=N,pp=N,ep=N[,tp=N] (dp·pp·ep·tp GPUs, as dsv3-train)', 'dp=2,pp=16,ep=64')
  .addOption(new Option('--pp-schedule <kind>', 'pipeline schedule').argParser(kind).default('dualpipe'))
  .option('--seq <n>', 'sequence length', int, 4096)
  .option('--global-batch <n>', 'sequences per step', int, 15360)
  .option('--micro-batch <n>', 'sequences per micro-batch', int, 1)
  .option('--max-nodes <n>', 'node-limited routing: most nodes per token (0 = unrestricted)', (s) => Number(s), 4)
  .option('--no-zero1', 'replicate optimizer state instead of sharding it (ZeRO-1)')
  .option('--efficiency <x>', 'fraction of peak FLOP/s the GEMMs reach (overrides the cluster)', num)
  .option('--json', 'machine-readable output')
  .action((o) => {
    const c = loadModel(o.model);
    const cl = loadCluster(o.cluster, o.efficiency);
    const p = planTraining(
      c,
      cl,
      { ...parseParallel(o.parallel), schedule: o.ppSchedule, zero1: o.zero1 },
      {
        seqLen: o.seq,
        globalBatch: o.globalBatch,
        microBatch: o.microBatch,
        maxNodesPerToken: o.maxNodes > 0 ? o.maxNodes : null,
      },
    );
    out(o.json, p, () => formatTrainPlan(p));
  });

program
  .command('serve')
  .description("plan a prefill or decode deployment unit (defaults: V3's units)")
  .option('--model <preset|config.json>', 'model', 'deepseek-v3')
  .option('--cluster <preset|cluster.json>', 'cluster description', 'h800')
  .addOption(new Option('--unit <phase>', 'deployment unit').choices(['prefill', 'decode']).default('decode'))
  .option('--gpus <n>', 'GPUs in the unit', int)
  .option('--tp <n>', 'attention tensor parallel degree', int)
  .option('--redundant <n>', 'redundant expert slots', (s) => Number(s))
  .option('--tokens <n>', 'tokens (prefill) or sequences (decode) per attention group per step', int)
  .option('--context <n>', 'context length', int)
  .option('--json', 'machine-readable output')
  .action((o) => {
    const base = o.unit === 'prefill' ? V3_PREFILL : V3_DECODE;
    const unit = {
      ...base,
      gpus: o.gpus ?? base.gpus,
      attentionTp: o.tp ?? base.attentionTp,
      redundantSlots: o.redundant ?? base.redundantSlots,
      tokensPerGroup: o.tokens ?? base.tokensPerGroup,
      context: o.context ?? base.context,
    };
    const p = planServing(loadModel(o.model), loadCluster(o.cluster), unit);
    out(o.json, p, () => formatServePlan(p));
  });

program
  .command('schedule')
  .description('simulate a pipeline schedule: bubble, makespan, peak activations per rank')
  .addOption(new Option('--kind <kind>', 'schedule').argParser(kind).default('dualpipe'))
  .option('--ranks <n>', 'pipeline ranks', int, 8)
  .option('--chunks <n>', 'micro-batches', int, 20)
  .option('--costs <spec>', 'op costs F=,B=,W=,FB=,p2p= (B: backward for inputs only)', 'F=1,B=1,W=0.5,FB=2')
  .option('--table', 'the reference bubble table for PP 4, 8, 16')
  .option('--ops', "print each rank's compute operations (F0, B1z = deferred weights, F0&B1, W)")
  .option('--json', 'machine-readable output')
  .action((o) => {
    if (o.table) {
      const rows = bubbleTable();
      return out(o.json, rows, () => formatBubbles(rows));
    }
    const costs: Record<string, number> = { F: 1, B: 1, W: 0.5 };
    for (const part of String(o.costs).split(',')) {
      const [k, v] = part.split('=');
      if (!k || !['F', 'B', 'W', 'FB', 'p2p'].includes(k.trim()) || v === undefined || !Number.isFinite(Number(v)))
        throw new InvalidArgumentError(`--costs: cannot read '${part}' (expected F=,B=,W=,FB=,p2p= numbers)`);
      costs[k.trim()] = Number(v);
    }
    const s = buildSchedule(o.kind, { ranks: o.ranks, chunks: o.chunks });
    const sim = simulate(s, costs as never);
    const summary = {
      kind: s.kind,
      ranks: s.ranks,
      chunks: s.chunks,
      stages: s.stages,
      makespan: sim.makespan,
      bubbleFraction: sim.bubbleFraction,
      maxBubble: sim.maxBubble,
      peakActivations: sim.peakActivations,
      parameterCopies: sim.parameterCopies,
      ranksReport: sim.ranks.map(({ timeline: _t, ...r }) => r),
    };
    const opsText = (): string =>
      s.ops
        .map(
          (ops, r) =>
            `rank ${r}: ${ops.flatMap((op) => (op.kind === 'F' ? [`F${op.phase}`] : op.kind === 'B' ? [`B${op.phase}${op.deferW ? 'z' : ''}`] : op.kind === 'FB' ? [`F${op.forwardPhase}&B${op.backwardPhase}`] : op.kind === 'W' ? ['W'] : [])).join(' ')}`,
        )
        .join('\n');
    out(o.json, o.ops ? { ...summary, ops: s.ops } : summary, () =>
      [
        `${s.kind}: ${s.ranks} ranks, ${s.chunks} chunks, ${s.stages} stages; makespan ${sim.makespan}, bubble fraction ${(100 * sim.bubbleFraction).toFixed(1)}%, ${sim.parameterCopies}x parameters`,
        table(
          ['rank', 'stages', 'busy', 'bubble', 'peak activations'],
          sim.ranks.map((r) => [r.rank, s.rankStages[r.rank]!.join(' '), r.busy, r.bubble, r.peakActivations]),
        ),
        ...(o.ops ? [opsText()] : []),
      ].join('\n\n'),
    );
  });

program
  .command('v3')
  .description("recompute DeepSeek-V3's published system numbers with the assumptions stated")
  .option('--cluster <preset|cluster.json>', 'cluster description', 'h800')
  .option('--json', 'machine-readable output')
  .action((o) => {
    const r = reproduceV3(presetConfig('deepseek-v3'), loadCluster(o.cluster));
    out(o.json, r, () => formatV3(r));
  });

program.parseAsync().catch((e: unknown) => {
  process.stderr.write(`dsv3-plan: ${e instanceof PlanError || e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
