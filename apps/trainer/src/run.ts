// What the CLI and the demo do: resolve a config from a file or preset plus flags, train, sample.
import { readFileSync } from 'node:fs';
import { defaultBackend, type Backend } from '@dsv3/core';
import { generate, loadModel, loadTokenizer } from '@dsv3/model';
import { parseParallel } from '@dsv3/parallel';
import {
  parseTrainConfig,
  PRESET_CONFIGS,
  train,
  type TrainConfig,
  type TrainPreset,
  type TrainResult,
} from '@dsv3/train';
import { progressHooks } from './progress.js';

export interface TrainArgs {
  config?: string;
  preset?: string;
  steps?: number;
  out?: string;
  resume?: string;
  backend?: 'cpu' | 'webgpu';
  data?: string;
  precision?: 'fp32' | 'bf16' | 'fp8';
  timeLimit?: number;
  progress?: boolean;
  /** "dp=2,pp=2,ep=2" */
  parallel?: string;
  ppSchedule?: string;
  zero1?: boolean;
  ranksPerNode?: number;
  /** DualPipe's forward/backward overlap: "on" (the config's default) or "off". */
  fbOverlap?: 'on' | 'off';
}

export class UsageError extends Error {
  override name = 'UsageError';
}

/** The config of --config FILE or --preset NAME with the flags applied (validated); null when resuming without either. */
export function resolveConfig(a: TrainArgs): TrainConfig | null {
  if (a.config && a.preset) throw new UsageError('give --config FILE or --preset NAME, not both');
  let raw: Record<string, unknown>;
  let source: string;
  if (a.config) {
    source = a.config;
    try {
      raw = JSON.parse(readFileSync(a.config, 'utf8')) as Record<string, unknown>;
    } catch (e) {
      throw new UsageError(`cannot read the config ${a.config}: ${(e as Error).message}`);
    }
  } else if (a.preset) {
    if (!(a.preset in PRESET_CONFIGS)) throw new UsageError(`unknown preset "${a.preset}" (tiny or mini)`);
    raw = structuredClone(PRESET_CONFIGS[a.preset as TrainPreset]) as Record<string, unknown>;
    source = `preset ${a.preset}`;
  } else if (a.resume) return null;
  else throw new UsageError('nothing to train: give --config FILE or --preset tiny|mini (or --resume DIR)');
  if (a.data !== undefined) raw.data = { ...((raw.data as object | undefined) ?? {}), path: a.data };
  if (a.backend !== undefined) raw.backend = a.backend;
  if (a.precision !== undefined) raw.precision = a.precision;
  if (
    a.parallel !== undefined ||
    a.ppSchedule !== undefined ||
    a.zero1 !== undefined ||
    a.ranksPerNode !== undefined ||
    a.fbOverlap !== undefined
  ) {
    let dims: ReturnType<typeof parseParallel> | null = null;
    try {
      dims = a.parallel !== undefined ? parseParallel(a.parallel) : null;
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    if (dims && dims.tp !== 1)
      throw new UsageError('--parallel: tensor parallelism (tp) is not implemented; use dp, pp and ep');
    raw.parallel = {
      ...((raw.parallel as object | undefined) ?? {}),
      ...(dims && { dataParallel: dims.dp, pipelineParallel: dims.pp, expertParallel: dims.ep }),
      ...(a.ppSchedule !== undefined && { schedule: a.ppSchedule }),
      ...(a.zero1 !== undefined && { zero1: a.zero1 }),
      ...(a.ranksPerNode !== undefined && { ranksPerNode: a.ranksPerNode }),
      ...(a.fbOverlap !== undefined && { overlapForwardBackward: a.fbOverlap === 'on' }),
    };
  }
  return parseTrainConfig(raw, source);
}

async function backendFor(name: 'cpu' | 'webgpu'): Promise<Backend & { dispose?(): void }> {
  if (name === 'cpu') return defaultBackend();
  const { createNodeWebGpuBackend } = await import('@dsv3/core/node');
  try {
    return await createNodeWebGpuBackend();
  } catch (e) {
    throw new Error(`--backend webgpu: ${(e as Error).message}`);
  }
}

const stamp = (): string => new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-');

export async function runTrain(a: TrainArgs): Promise<TrainResult> {
  const config = resolveConfig(a);
  if (a.steps !== undefined && !(Number.isInteger(a.steps) && a.steps > 0))
    throw new UsageError(`--steps must be a positive integer, got ${a.steps}`);
  if (a.timeLimit !== undefined && !(a.timeLimit > 0))
    throw new UsageError(`--time-limit must be a positive number of seconds, got ${a.timeLimit}`);
  const out = a.out ?? (a.resume ? undefined : `runs/${a.preset ?? 'run'}-${stamp()}`);
  const backendName = a.backend ?? config?.backend ?? 'cpu';
  const backend = await backendFor(backendName);
  const hooks = progressHooks({
    tty: (a.progress ?? true) && process.stderr.isTTY === true,
    logEvery: config?.intervals.log ?? 1,
  });
  try {
    return await train({
      ...(config && { config }),
      ...(out && { outDir: out }),
      ...(a.resume && { resume: a.resume }),
      ...(a.steps !== undefined && { steps: a.steps }),
      ...(a.timeLimit !== undefined && { maxSeconds: a.timeLimit }),
      backend,
      hooks,
    });
  } finally {
    hooks.stop();
    // The device this run created goes with it (a live Dawn device keeps the process from exiting);
    // the returned model's tensors lived on it, the checkpoints on disk hold the weights.
    backend.dispose?.();
  }
}

export interface SampleArgs {
  checkpoint: string;
  prompt: string;
  maxNewTokens: number;
  temperature: number;
  topK?: number;
  seed: number;
}

/** Generated continuation of the prompt (text only, without the prompt). */
export async function runSample(a: SampleArgs): Promise<string> {
  if (!(Number.isInteger(a.maxNewTokens) && a.maxNewTokens > 0))
    throw new UsageError(`--max-new-tokens must be a positive integer, got ${a.maxNewTokens}`);
  const tokenizer = await loadTokenizer(a.checkpoint);
  const model = loadModel(a.checkpoint);
  model.eval();
  const ids = tokenizer.encode(a.prompt);
  const room = model.config.maxPositionEmbeddings - ids.length;
  if (room < 1)
    throw new UsageError(
      `the prompt is ${ids.length} tokens, the model's context is ${model.config.maxPositionEmbeddings}`,
    );
  const out = await generate(model, [ids], {
    maxNewTokens: Math.min(a.maxNewTokens, room),
    temperature: a.temperature,
    seed: a.seed,
    ...(a.topK && { topK: a.topK }),
  });
  return tokenizer.decode(out.newTokens[0]!, { skipSpecialTokens: true });
}
