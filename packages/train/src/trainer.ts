// The training run: config → model, tokenizer, data → steps, with metrics, evals, checkpoints and the
// report in the output directory; resumable bit-exactly from any checkpoint.
import { accessSync, constants, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { AdamW, defaultBackend, type Backend, type Parameter, type Tensor } from '@dsv3/core';
import { MoE } from '@dsv3/moe';
import {
  countParameters,
  flopsPerToken,
  loadModel,
  loadTokenizer,
  type DeepseekV3ForCausalLM,
  type Tokenizer,
} from '@dsv3/model';
import { findResumePoint, saveCheckpoint, type TrainerState } from './checkpoint.js';
import { parseTrainConfig, type TrainConfig } from './config.js';
import { TokenStream } from './data/stream.js';
import { MetricsLog, type EvalRecord, type StepRecord } from './metrics.js';
import { architectureDiff, buildModel, buildTokenizer, modelConfigOf } from './model.js';
import { applyPrecision } from './precision.js';
import { applyRecompute } from './recompute.js';
import { writeReport } from './report.js';
import { batchSequences, biasUpdateSpeed, learningRate, mtpLambda } from './schedule.js';
import { evaluate, trainStep } from './step.js';
import {
  adamSteps,
  attachParallel,
  buildRankModel,
  joinParallel,
  loadRunMoments,
  parallelEvaluate,
  parallelTrainStep,
  runMoments,
  saveParallelCheckpoint,
} from './parallel/index.js';

export interface TrainerHooks {
  onStart?(info: {
    runDir: string;
    startStep: number;
    totalSteps: number;
    parameters: number;
    activated: number;
    tokenizer: string;
    resumedFrom: string | null;
  }): void;
  onStep?(r: StepRecord, totalSteps: number): void;
  onEval?(r: EvalRecord): void;
  onCheckpoint?(dir: string): void;
}

export interface TrainOptions {
  /** The configuration (ignored for everything but the model check and `steps` when resuming). */
  config?: TrainConfig;
  /** Output directory of a new run (must not already hold one). */
  outDir?: string;
  /** A run directory or a checkpoint directory to continue from. */
  resume?: string;
  /** Run until this many optimizer steps in all (default: the config's). */
  steps?: number;
  /** Stop (with a checkpoint) once this many seconds have passed, even before `steps`. */
  maxSeconds?: number;
  /** Backend to train on (default: the config's; `webgpu` needs one passed in). */
  backend?: Backend;
  hooks?: TrainerHooks;
}

export interface TrainResult {
  runDir: string;
  steps: number;
  lastCheckpoint: string | null;
  metricsPath: string;
  reportPath: string;
  model: DeepseekV3ForCausalLM;
  tokenizer: Tokenizer;
}

export class RunExistsError extends Error {
  override name = 'RunExistsError';
}

function prepareRunDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, constants.W_OK);
    const probe = join(dir, `.write-probe-${process.pid}`);
    writeFileSync(probe, '');
    rmSync(probe);
  } catch (e) {
    throw new Error(`output directory ${dir} is not writable: ${(e as Error).message}`);
  }
}

function assertFreshRunDir(dir: string): void {
  if (!existsSync(dir)) return;
  const taken = readdirSync(dir).filter(
    (n) => n === 'metrics.jsonl' || n === 'checkpoints' || n === 'train-config.json',
  );
  if (taken.length > 0) {
    throw new RunExistsError(
      `${dir} already holds a training run (${taken.join(', ')}); pass --resume ${dir} to continue it, or choose another --out`,
    );
  }
}

/** Weight decay applies to matrices, not to norms' gains or biases. */
function splitParams(model: DeepseekV3ForCausalLM): { decay: [string, Parameter][]; noDecay: [string, Parameter][] } {
  const all = model.namedParameters();
  return { decay: all.filter(([, p]) => p.value.ndim >= 2), noDecay: all.filter(([, p]) => p.value.ndim < 2) };
}

function momentsOf(groups: [string, Parameter][][], opts: AdamW[]): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  groups.forEach((g, i) => {
    for (const [name, p] of g) {
      const s = opts[i]!.moments(p);
      if (s) {
        out[`${name}.exp_avg`] = s.m;
        out[`${name}.exp_avg_sq`] = s.v;
      }
    }
  });
  return out;
}

export async function train(opts: TrainOptions): Promise<TrainResult> {
  const resume = opts.resume ? findResumePoint(opts.resume) : null;
  let cfg: TrainConfig;
  if (resume) {
    cfg = parseTrainConfig(resume.state.config, `${resume.checkpointDir}/trainer_state.json`);
    if (opts.config) {
      const diff = architectureDiff(modelConfigOf(opts.config), modelConfigOf(cfg));
      if (diff.length > 0)
        throw new Error(
          `--resume ${opts.resume}: the checkpoint is a different model than the config asks for (${diff.slice(0, 4).join('; ')})`,
        );
    }
    if (opts.outDir && resolve(opts.outDir) !== resolve(resume.runDir)) {
      throw new Error(`--resume continues the run in ${resume.runDir}; --out ${opts.outDir} names another directory`);
    }
  } else {
    if (!opts.config) throw new Error('train: a config is needed to start a run');
    if (!opts.outDir) throw new Error('train: an output directory is needed to start a run');
    cfg = opts.config;
    assertFreshRunDir(opts.outDir);
  }
  const totalSteps = opts.steps ?? cfg.steps;
  const runDir = resume ? resume.runDir : opts.outDir!;
  // A parallel layout: every rank trains, rank 0 alone writes the run directory.
  const par = await joinParallel(cfg);
  const leader = !par || par.leader;
  if (leader) prepareRunDir(runDir);
  const backend = opts.backend ?? (cfg.backend === 'cpu' ? defaultBackend() : undefined);
  if (!backend)
    throw new Error(
      'train: backend "webgpu" needs a WebGPU backend passed in (the CLI creates one through @dsv3/core/node)',
    );

  // A parallel rank builds or reads only its own shards.
  const model = par
    ? buildRankModel(cfg, par, backend, resume?.checkpointDir)
    : resume
      ? loadModel(resume.checkpointDir, { backend, dtype: 'f32' })
      : buildModel(cfg, backend);
  const mc = model.config;
  // A checkpoint carries its tokenizer files: a resumed run needs nothing but the checkpoint.
  const tokenizer = resume ? await loadTokenizer(resume.checkpointDir) : await buildTokenizer(cfg, mc);
  applyPrecision(model, cfg.precision);
  if (cfg.recompute) applyRecompute(model);
  model.train();

  const stream = new TokenStream({
    path: cfg.data.path,
    tokenizer,
    seqLen: cfg.batch.seqLen,
    seed: cfg.seed,
    evalFraction: cfg.data.evalFraction,
    shuffleBuffer: cfg.data.shuffleBuffer,
  });
  const groups = splitParams(model);
  const adam = (g: [string, Parameter][], wd: number) =>
    new AdamW(
      g.map(([, p]) => p),
      { betas: cfg.optimizer.betas, eps: cfg.optimizer.eps, weightDecay: wd, stateDType: cfg.optimizer.momentDType },
    );
  const optimizers = [adam(groups.decay, cfg.optimizer.weightDecay), adam(groups.noDecay, 0)];
  const params = model.parameters();
  const metrics = new MetricsLog(join(runDir, 'metrics.jsonl'));

  let step = 0;
  let tokens = 0;
  if (resume) {
    const s = resume.state;
    step = s.step;
    tokens = s.tokens;
    // (a parallel run takes the moments of its own parameters once they are sharded, below)
    if (!par)
      [groups.decay, groups.noDecay].forEach((g, i) => {
        optimizers[i]!.step = s.adamSteps[i]!;
        for (const [name, p] of g) {
          const m = resume.moments[`${name}.exp_avg`];
          const v = resume.moments[`${name}.exp_avg_sq`];
          if (m && v) optimizers[i]!.setMoments(p, { m, v });
        }
      });
    await stream.seek(s.data);
    if (leader) metrics.truncateAfter(step);
  } else if (leader) {
    writeFileSync(join(runDir, 'train-config.json'), `${JSON.stringify(cfg, null, 2)}\n`);
  }
  const parRun = par
    ? attachParallel(par, cfg, model, [
        { params: groups.decay.map(([, p]) => p), weightDecay: cfg.optimizer.weightDecay },
        { params: groups.noDecay.map(([, p]) => p), weightDecay: 0 },
      ])
    : null;
  if (parRun && resume) loadRunMoments(parRun, resume.state.adamSteps, resume.moments);

  const counts = countParameters(mc);
  opts.hooks?.onStart?.({
    runDir,
    startStep: step,
    totalSteps,
    parameters: counts.total + counts.mtp,
    activated: counts.activated,
    tokenizer: `${tokenizer.vocabSize} tokens`,
    resumedFrom: resume?.checkpointDir ?? null,
  });
  const evalSeqs = await stream.evalSequences(cfg.intervals.evalBatches * cfg.batch.microBatch);
  const flopsPerTok = flopsPerToken(mc, { context: cfg.batch.seqLen, mode: 'train' });
  const lrAt = learningRate(cfg.schedule);
  let lastCheckpoint: string | null = resume?.checkpointDir ?? null;
  const t0 = performance.now();
  const reportPath = join(runDir, 'report.html');
  // "model.layers.3.mlp" → "layer 3", "mtp.0.block.mlp" → "MTP 1"
  const moeLayerNames = model
    .namedModules()
    .filter(([, m]) => m instanceof MoE)
    .map(([n]) => (n.startsWith('mtp.') ? `MTP ${Number(n.split('.')[1]) + 1}` : `layer ${n.split('.')[2]}`));
  const report = () =>
    writeReport(reportPath, metrics.read(), {
      title: `dsv3 training run: ${runDir}`,
      summary: {
        model: cfg.model.preset ?? cfg.model.config ?? cfg.model.checkpoint ?? '',
        parameters: counts.total + counts.mtp,
        precision: cfg.precision,
        'batch (sequences x tokens)': `${cfg.batch.sequences} x ${cfg.batch.seqLen}`,
        steps: `${step} / ${totalSteps}`,
      },
      moeLayerNames,
    });

  const checkpoint = async () => {
    const state: TrainerState = {
      format: 1,
      step,
      tokens,
      data: stream.dataPosition,
      rng: { seed: cfg.seed, dataEpoch: stream.dataPosition.epoch },
      adamSteps: parRun ? adamSteps(parRun) : [optimizers[0]!.step, optimizers[1]!.step],
      config: cfg,
    };
    if (parRun) {
      // every rank writes its part of the sharded model and optimizer state
      const moments = await runMoments(parRun);
      lastCheckpoint = await saveParallelCheckpoint({
        run: parRun,
        runDir,
        tokenizer,
        moments,
        state,
        keepLast: cfg.intervals.keepLast,
      });
      if (leader) opts.hooks?.onCheckpoint?.(lastCheckpoint);
      return;
    }
    lastCheckpoint = await saveCheckpoint({
      runDir,
      model,
      tokenizer,
      moments: momentsOf([groups.decay, groups.noDecay], optimizers),
      state,
      maxShardBytes: cfg.maxShardBytes,
      keepLast: cfg.intervals.keepLast,
    });
    opts.hooks?.onCheckpoint?.(lastCheckpoint!);
  };

  while (step < totalSteps) {
    const ts = performance.now();
    const nSeq = batchSequences(cfg.batch, step);
    const sequences = await stream.next(nSeq);
    const lr = lrAt(step);
    const lambda = mtpLambda(cfg.mtp, step);
    const stepInputs = {
      sequences,
      microBatch: cfg.batch.microBatch,
      lr,
      mtpLambda: lambda,
      seqAuxAlpha: cfg.balance.sequenceAuxAlpha,
      biasUpdateSpeed: biasUpdateSpeed(cfg.balance, step),
      clipNorm: cfg.optimizer.clipNorm,
    };
    const r = parRun
      ? await parallelTrainStep(parRun, stepInputs)
      : await trainStep(model, optimizers, params, stepInputs);
    if (!Number.isFinite(r.loss))
      throw new Error(
        `step ${step + 1}: the loss is ${r.loss}; stopping (last checkpoint: ${lastCheckpoint ?? 'none'})`,
      );
    step++;
    const stepTokens = nSeq * cfg.batch.seqLen;
    tokens += stepTokens;
    const secs = (performance.now() - ts) / 1000;
    const tps = stepTokens / secs;
    const rec: StepRecord = {
      kind: 'train',
      step,
      tokens,
      loss: r.loss,
      mainLoss: r.mainLoss,
      mtpLoss: r.mtpLoss,
      balanceLoss: r.balanceLoss,
      gradNorm: r.gradNorm,
      lr,
      mtpLambda: lambda,
      batchSequences: nSeq,
      maxVio: r.maxVio,
      maxVioMean: r.maxVio.length ? r.maxVio.reduce((a, b) => a + b, 0) / r.maxVio.length : 0,
      tokensPerSec: tps,
      mfu: (tps * flopsPerTok) / cfg.peakFlops,
      elapsedSec: (performance.now() - t0) / 1000,
    };
    let outOfTime = opts.maxSeconds !== undefined && (performance.now() - t0) / 1000 >= opts.maxSeconds;
    // Every rank must stop at the same step: rank 0's clock decides.
    if (par) outOfTime = (await par.world.broadcast(Uint8Array.of(outOfTime ? 1 : 0), 0).wait())[0] === 1;
    const last = step === totalSteps || outOfTime;
    if (leader && (step % cfg.intervals.log === 0 || last)) metrics.append(rec);
    if (leader) opts.hooks?.onStep?.(rec, totalSteps);
    if (evalSeqs.length > 0 && (step % cfg.intervals.eval === 0 || last)) {
      const e = parRun
        ? await parallelEvaluate(parRun, evalSeqs, cfg.batch.microBatch)
        : await evaluate(model, evalSeqs, cfg.batch.microBatch);
      const er: EvalRecord = { kind: 'eval', step, tokens, evalLoss: e.loss, evalTokens: e.tokens };
      if (leader) {
        metrics.append(er);
        opts.hooks?.onEval?.(er);
        report();
      }
    }
    if (step % cfg.intervals.checkpoint === 0 || last) await checkpoint();
    if (outOfTime) break;
  }
  if (leader) report();
  await par?.world.destroy();
  return { runDir, steps: step, lastCheckpoint, metricsPath: metrics.path, reportPath, model, tokenizer };
}
