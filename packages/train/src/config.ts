// The training configuration: one JSON document validated with zod. Every problem is reported at once
// and unknown keys are rejected, so a typo never silently falls back to a default.
import { SCHEDULE_KINDS, type ScheduleKind } from '@dsv3/parallel';
import { z } from 'zod';

export class TrainConfigError extends Error {
  override name = 'TrainConfigError';
}

const positiveInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();

const modelSchema = z
  .strictObject({
    /** A built-in model preset (see PRESET_MODELS). */
    preset: z.enum(['tiny', 'mini']).optional(),
    /** A Hugging Face deepseek_v3 config.json to build a fresh model from. */
    config: z.string().min(1).optional(),
    /** A checkpoint directory (config.json + safetensors) to continue training from (its weights only). */
    checkpoint: z.string().min(1).optional(),
    /** config.json keys that override the preset's or file's (not allowed with `checkpoint`). */
    overrides: z.record(z.string(), z.unknown()).default({}),
    /** Init std of the projections (DeepSeek-V3: 0.006); default 1/sqrt(fan_in). */
    initStd: z.number().positive().optional(),
  })
  .refine((m) => [m.preset, m.config, m.checkpoint].filter((v) => v !== undefined).length === 1, {
    message: 'give exactly one of model.preset, model.config or model.checkpoint',
  })
  .refine((m) => !(m.checkpoint && Object.keys(m.overrides).length > 0), {
    message: "model.overrides cannot change a checkpoint's architecture",
  });

const dataSchema = z.strictObject({
  /** Text file, folder of text/JSONL files, or a .jsonl file with a `text` field; default the built-in corpus. */
  path: z.string().min(1).nullable().default(null),
  /** Fraction of documents held out for evaluation (chosen by a hash of the document id). */
  evalFraction: z.number().min(0).max(0.5).default(0.02),
  /** Packed sequences in the shuffle buffer. */
  shuffleBuffer: positiveInt.default(256),
});

const tokenizerSchema = z.union([
  z.enum(['byte-level', 'deepseek-v3', 'checkpoint']),
  z.strictObject({ dir: z.string().min(1) }),
]);

const optimizerSchema = z.strictObject({
  betas: z.tuple([z.number().min(0).lt(1), z.number().min(0).lt(1)]).default([0.9, 0.95]),
  eps: z.number().positive().default(1e-8),
  weightDecay: z.number().min(0).default(0.1),
  /** Global gradient-norm clipping (DeepSeek-V3: 1.0). */
  clipNorm: z.number().positive().default(1.0),
  /** AdamW moment dtype (DeepSeek-V3: bf16); master weights stay f32. */
  momentDType: z.enum(['bf16', 'f32']).default('bf16'),
});

const scheduleSchema = z.discriminatedUnion('type', [
  // DeepSeek-V3: linear warm-up → constant → cosine decay to minLr → constant tail phases.
  z.strictObject({
    type: z.literal('v3'),
    lr: z.number().positive(),
    warmupSteps: nonNegInt,
    constantSteps: nonNegInt,
    decaySteps: nonNegInt,
    minLr: z.number().min(0),
    /** Later constant phases: [{ steps, lr }] after the decay (V3: 2.2e-5 then 7.3e-6); the last lasts forever. */
    tail: z.array(z.strictObject({ steps: nonNegInt, lr: z.number().min(0) })).default([]),
  }),
  // Warmup-stable-decay.
  z.strictObject({
    type: z.literal('wsd'),
    lr: z.number().positive(),
    warmupSteps: nonNegInt,
    stableSteps: nonNegInt,
    decaySteps: nonNegInt,
    minLr: z.number().min(0),
    shape: z.enum(['linear', 'cosine']).default('linear'),
  }),
  z.strictObject({ type: z.literal('constant'), lr: z.number().positive(), warmupSteps: nonNegInt.default(0) }),
]);

const batchSchema = z
  .strictObject({
    /** Sequences per optimizer step. */
    sequences: positiveInt,
    /** Sequences per forward/backward (gradient accumulation over sequences / microBatch passes). */
    microBatch: positiveInt,
    seqLen: z.number().int().min(4),
    /** Batch-size ramp (V3: 3072 → 15360 sequences over the first 469B tokens): linear from `from` over `steps`. */
    ramp: z.strictObject({ from: positiveInt, steps: positiveInt }).nullable().default(null),
  })
  .refine((b) => !b.ramp || b.ramp.from <= b.sequences, { message: 'batch.ramp.from must be at most batch.sequences' });

const mtpSchema = z.strictObject({
  /** MTP depth D (the model's num_nextn_predict_layers; 0 = no MTP modules). */
  depth: nonNegInt.default(1),
  /** λ (V3: 0.3 for the first 10T tokens, then 0.1). */
  lambda: z.number().min(0).default(0.3),
  /** λ from this step on (V3's second phase); null = λ throughout. */
  later: z
    .strictObject({ fromStep: nonNegInt, lambda: z.number().min(0) })
    .nullable()
    .default(null),
});

const balanceSchema = z.strictObject({
  /** Aux-loss-free bias update speed γ (V3: 0.001; 0 = off). */
  biasUpdateSpeed: z.number().min(0).default(0.001),
  /** Stop updating the bias from this step (V3 sets γ = 0 for the last 500B tokens); null = never. */
  biasUpdateUntilStep: nonNegInt.nullable().default(null),
  /** Sequence-wise balance loss α (V3: 0.0001; 0 = off). */
  sequenceAuxAlpha: z.number().min(0).default(0.0001),
});

const parallelSchema = z.strictObject({
  /** The ranks the job needs: dataParallel × expertParallel × pipelineParallel (launch with dsv3-run). */
  dataParallel: positiveInt.default(1),
  expertParallel: positiveInt.default(1),
  pipelineParallel: positiveInt.default(1),
  /** Pipeline schedule when pipelineParallel > 1. */
  schedule: z.enum(SCHEDULE_KINDS as unknown as [ScheduleKind, ...ScheduleKind[]]).default('1f1b'),
  /**
   * DualPipe / DualPipeV: run each FB pair's forward and backward chunks concurrently, so one chunk's
   * expert all-to-all waits behind the other's computation (bitwise the same step as false).
   */
  overlapForwardBackward: z.boolean().default(true),
  /** Shard the optimizer state over the ranks (ZeRO-1). */
  zero1: z.boolean().default(false),
  /** Expert-parallel payloads: 'exact' (the activations' dtype) or 'v3' (FP8 dispatch, BF16 combine). */
  expertWire: z.enum(['exact', 'v3']).default('exact'),
  /**
   * Ranks per node (ranks fill nodes in order); an expert-parallel group spanning nodes then dispatches
   * in two hops, across nodes to the same local rank and then within the node. null: one node.
   */
  ranksPerNode: positiveInt.nullable().default(null),
});

const intervalsSchema = z.strictObject({
  log: positiveInt.default(1),
  eval: positiveInt.default(50),
  /** Held-out micro-batches per evaluation. */
  evalBatches: positiveInt.default(4),
  checkpoint: positiveInt.default(100),
  /** Checkpoints kept (oldest removed first). */
  keepLast: positiveInt.default(3),
});

export const trainConfigSchema = z.strictObject({
  model: modelSchema,
  tokenizer: tokenizerSchema.default('checkpoint'),
  data: dataSchema.default(dataSchema.parse({})),
  optimizer: optimizerSchema.default(optimizerSchema.parse({})),
  schedule: scheduleSchema,
  batch: batchSchema,
  /** fp32: all f32; bf16: GEMM operands of every projection/expert rounded to bf16 (f32 accumulation); fp8: those GEMMs as FP8Linear. */
  precision: z.enum(['fp32', 'bf16', 'fp8']).default('bf16'),
  /** Selective recomputation of RMSNorm, MLA up-projections and SwiGLU in the backward (saves activation memory). */
  recompute: z.boolean().default(false),
  mtp: mtpSchema.default(mtpSchema.parse({})),
  balance: balanceSchema.default(balanceSchema.parse({})),
  parallel: parallelSchema.default(parallelSchema.parse({})),
  intervals: intervalsSchema.default(intervalsSchema.parse({})),
  steps: positiveInt,
  seed: nonNegInt.default(0),
  backend: z.enum(['cpu', 'webgpu']).default('cpu'),
  /** Peak FLOP/s MFU is measured against (default: 2 cores x 8-wide FMA x 2 units x 3 GHz, f32 = 192 GFLOP/s). */
  peakFlops: z.number().positive().default(192e9),
  /** Checkpoint safetensors are sharded with an index past this many bytes. */
  maxShardBytes: positiveInt.default(2_000_000_000),
});

export type TrainConfig = z.output<typeof trainConfigSchema>;
export type TrainConfigInput = z.input<typeof trainConfigSchema>;

/** Validates a parsed JSON config; throws one TrainConfigError listing every problem. */
export function parseTrainConfig(raw: unknown, source = 'config'): TrainConfig {
  const r = trainConfigSchema.safeParse(raw);
  if (!r.success) {
    const lines = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new TrainConfigError(`invalid training config (${source}):\n  ${lines.join('\n  ')}`);
  }
  const c = r.data;
  if (c.batch.sequences % c.batch.microBatch !== 0 || (c.batch.ramp && c.batch.ramp.from % c.batch.microBatch !== 0)) {
    throw new TrainConfigError(
      `invalid training config (${source}):\n  batch: sequences (${c.batch.sequences}) and ramp.from must be multiples of microBatch (${c.batch.microBatch})`,
    );
  }
  return c;
}
