// A checkpoint of a sharded run: every rank writes the tensors it is the first holder of (its stages'
// and experts' weights, and their optimizer moments) as one shard file into a shared temporary folder;
// the leader adds the shard index, config.json, the tokenizer and trainer_state.json and renames the
// folder into place. The result is an ordinary Hugging Face checkpoint (model-0000i-of-0000n.safetensors
// + model.safetensors.index.json) that one process loads, and that a run with the same layout resumes.
// Ranks share the run directory's file system (one machine, or a shared mount).
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bytesPerElement, cast, saveSafetensors, SHARD_INDEX_FILE, type Tensor } from '@dsv3/core';
import { checkpointName, saveTokenizer, toHfConfig, type Tokenizer } from '@dsv3/model';
import { listCheckpoints, stepDirName, TRAINER_STATE_FILE, type TrainerState } from '../checkpoint.js';
import type { ShardPlan } from './shard.js';
import type { ParallelRun } from './step.js';

export interface ParallelCheckpointArgs {
  run: ParallelRun;
  runDir: string;
  tokenizer: Tokenizer;
  /** This rank's moments (runMoments). */
  moments: Record<string, Tensor>;
  state: TrainerState;
  keepLast: number;
}

/** The ranks that write a shard (first holders of at least one tensor), ascending. */
function writers(plan: ShardPlan): number[] {
  return [...new Set([...plan.holders.values()].map((r) => r[0]!))].sort((a, b) => a - b);
}

const shardFile = (prefix: string, i: number, n: number): string =>
  `${prefix}-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;

/** Checkpoint names of one state-dict entry: its own, plus the MTP layers' copies of the embedding and head. */
function checkpointNames(run: ParallelRun, name: string): string[] {
  const c = run.model.config;
  const out = [checkpointName(c, name)];
  for (let k = 0; k < run.model.mtp.length; k++) {
    const p = `model.layers.${c.numHiddenLayers + k}.`;
    if (name === 'model.embed_tokens.weight') out.push(`${p}embed_tokens.weight`);
    if (name === 'lm_head.weight') out.push(`${p}shared_head.head.weight`);
  }
  return out;
}

/** Writes checkpoints/step-N from every rank's part (every rank calls it); returns its path. */
export async function saveParallelCheckpoint(a: ParallelCheckpointArgs): Promise<string> {
  const { run } = a;
  const world = run.groups.world;
  const plan = run.plan;
  const leader = world.rank === 0;
  const root = join(a.runDir, 'checkpoints');
  const final = join(root, stepDirName(a.state.step));
  const tmp = join(root, `.tmp-${stepDirName(a.state.step)}-ranks`);
  if (leader) {
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
  }
  await world.barrier().wait();

  const who = writers(plan);
  const state = run.model.stateDict();
  const tensors: Record<string, Tensor> = {};
  let bytes = 0;
  for (const [name, ranks] of plan.holders) {
    if (ranks[0] !== plan.rank) continue;
    // Master weights in f32 so a resumed run continues exactly (as the one-process checkpoint).
    const t = cast(state[name]!, 'f32');
    for (const ck of checkpointNames(run, name)) {
      tensors[ck] = t;
      bytes += t.size * bytesPerElement('f32');
    }
  }
  const mine = who.indexOf(plan.rank);
  if (mine >= 0) {
    await saveSafetensors(join(tmp, shardFile('model', mine, who.length)), tensors);
    if (Object.keys(a.moments).length > 0)
      await saveSafetensors(join(tmp, shardFile('optimizer', mine, who.length)), a.moments);
  }
  const total = (await world.allReduce(Float64Array.of(bytes), 'sum').wait())[0]!;

  if (leader) {
    const weightMap: Record<string, string> = {};
    for (const [name, ranks] of plan.holders)
      for (const ck of checkpointNames(run, name))
        weightMap[ck] = shardFile('model', who.indexOf(ranks[0]!), who.length);
    const sorted = Object.fromEntries(Object.entries(weightMap).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)));
    writeFileSync(
      join(tmp, SHARD_INDEX_FILE),
      `${JSON.stringify({ metadata: { total_size: total }, weight_map: sorted }, null, 2)}\n`,
    );
    const config = { ...toHfConfig(run.model.config), torch_dtype: 'float32' };
    writeFileSync(join(tmp, 'config.json'), JSON.stringify(config, null, 2));
    await saveTokenizer(a.tokenizer, tmp);
    writeFileSync(join(tmp, TRAINER_STATE_FILE), JSON.stringify(a.state, null, 2));
    if (existsSync(final)) {
      const old = `${final}.old-${process.pid}`;
      renameSync(final, old);
      renameSync(tmp, final);
      rmSync(old, { recursive: true, force: true });
    } else renameSync(tmp, final);
    for (const stale of listCheckpoints(a.runDir).slice(0, -a.keepLast))
      rmSync(stale.dir, { recursive: true, force: true });
  }
  // No rank starts the next step's writes (or reads a checkpoint) before this one is in place.
  await world.barrier().wait();
  return final;
}
