// Checkpoints: OUT/checkpoints/step-NNNNNN/ holds what Hugging Face and @dsv3/model load as it is
// (config.json, model.safetensors or shards + index, tokenizer.json, tokenizer_config.json) and, beside
// it, what resuming needs (optimizer.safetensors, trainer_state.json). Written into a hidden temporary
// folder and renamed into place, so a killed run never leaves a half checkpoint under a step name.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadSafetensors, saveSafetensors, SHARD_INDEX_FILE, SINGLE_CHECKPOINT_FILE, type Tensor } from '@dsv3/core';
import { saveModel, saveTokenizer, type DeepseekV3ForCausalLM, type Tokenizer } from '@dsv3/model';
import type { TrainConfig } from './config.js';
import type { DataPosition } from './data/stream.js';

export const TRAINER_STATE_FILE = 'trainer_state.json';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
const STEP_DIR = /^step-(\d{6,})$/;
const OPTIMIZER_SHARD = /^optimizer-\d{5}-of-\d{5}\.safetensors$/;

export interface TrainerState {
  format: 1;
  /** Optimizer steps completed. */
  step: number;
  tokens: number;
  data: DataPosition;
  /** Randomness after initialisation is only the data order, a function of (seed, epoch). */
  rng: { seed: number; dataEpoch: number };
  /** AdamW step counters (decayed group, non-decayed group). */
  adamSteps: [number, number];
  config: TrainConfig;
}

export const stepDirName = (step: number): string => `step-${String(step).padStart(6, '0')}`;

export interface SaveCheckpointArgs {
  runDir: string;
  model: DeepseekV3ForCausalLM;
  tokenizer: Tokenizer;
  /** Named optimizer moments (`<param>.exp_avg`, `<param>.exp_avg_sq`). */
  moments: Record<string, Tensor>;
  state: TrainerState;
  maxShardBytes: number;
  keepLast: number;
}

/** Writes checkpoints/step-N atomically and removes the oldest beyond keepLast; returns its path. */
export async function saveCheckpoint(a: SaveCheckpointArgs): Promise<string> {
  const root = join(a.runDir, 'checkpoints');
  mkdirSync(root, { recursive: true });
  const final = join(root, stepDirName(a.state.step));
  const tmp = join(root, `.tmp-${stepDirName(a.state.step)}-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  // Master weights in f32 so a resumed run continues bit-exactly (HF loads f32 as it loads bf16).
  await saveModel(a.model, tmp, { dtype: 'f32', maxShardBytes: a.maxShardBytes });
  singleFileWhenUnsharded(tmp);
  await saveTokenizer(a.tokenizer, tmp);
  await saveSafetensors(join(tmp, OPTIMIZER_FILE), a.moments);
  writeFileSync(join(tmp, TRAINER_STATE_FILE), JSON.stringify(a.state, null, 2));
  if (existsSync(final)) {
    const old = `${final}.old-${process.pid}`;
    renameSync(final, old);
    renameSync(tmp, final);
    rmSync(old, { recursive: true, force: true });
  } else renameSync(tmp, final);
  for (const stale of listCheckpoints(a.runDir).slice(0, -a.keepLast))
    rmSync(stale.dir, { recursive: true, force: true });
  return final;
}

/** One shard is written as plain model.safetensors without an index (Hugging Face's layout below the shard size). */
function singleFileWhenUnsharded(dir: string): void {
  const index = JSON.parse(readFileSync(join(dir, SHARD_INDEX_FILE), 'utf8')) as { weight_map: Record<string, string> };
  const files = [...new Set(Object.values(index.weight_map))];
  if (files.length !== 1) return;
  renameSync(join(dir, files[0]!), join(dir, SINGLE_CHECKPOINT_FILE));
  rmSync(join(dir, SHARD_INDEX_FILE));
}

/** Complete checkpoints of a run, oldest first. */
export function listCheckpoints(runDir: string): { step: number; dir: string }[] {
  const root = join(runDir, 'checkpoints');
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .map((n) => ({ m: STEP_DIR.exec(n), n }))
    .filter((x) => x.m && existsSync(join(root, x.n, TRAINER_STATE_FILE)))
    .map((x) => ({ step: Number(x.m![1]), dir: join(root, x.n) }))
    .sort((a, b) => a.step - b.step);
}

export interface ResumePoint {
  /** The run directory (where metrics.jsonl and checkpoints/ live). */
  runDir: string;
  checkpointDir: string;
  state: TrainerState;
  moments: Record<string, Tensor>;
}

/** `dir` is a run directory (its newest checkpoint is used) or one checkpoint directory. */
export function findResumePoint(dir: string): ResumePoint {
  let checkpointDir: string;
  let runDir: string;
  if (existsSync(join(dir, TRAINER_STATE_FILE))) {
    checkpointDir = dir;
    runDir = join(dir, '..', '..');
  } else {
    if (!existsSync(dir)) throw new Error(`--resume ${dir}: no such directory`);
    const all = listCheckpoints(dir);
    if (all.length === 0)
      throw new Error(
        `--resume ${dir}: no complete checkpoint in ${join(dir, 'checkpoints')} (expected step-NNNNNN/ folders with ${TRAINER_STATE_FILE})`,
      );
    checkpointDir = all.at(-1)!.dir;
    runDir = dir;
  }
  let state: TrainerState;
  try {
    state = JSON.parse(readFileSync(join(checkpointDir, TRAINER_STATE_FILE), 'utf8')) as TrainerState;
  } catch (e) {
    throw new Error(`--resume: cannot read ${join(checkpointDir, TRAINER_STATE_FILE)}: ${(e as Error).message}`);
  }
  if (state.format !== 1)
    throw new Error(`--resume: ${checkpointDir} has trainer state format ${String(state.format)}, expected 1`);
  return { runDir, checkpointDir, state, moments: loadMoments(checkpointDir) };
}

/** optimizer.safetensors, or the shards a parallel run's ranks wrote (optimizer-0000i-of-0000n.safetensors). */
function loadMoments(dir: string): Record<string, Tensor> {
  const shards = readdirSync(dir).filter((n) => OPTIMIZER_SHARD.test(n));
  if (shards.length === 0) return loadSafetensors(join(dir, OPTIMIZER_FILE));
  return Object.assign({}, ...shards.sort().map((n) => loadSafetensors(join(dir, n))));
}
