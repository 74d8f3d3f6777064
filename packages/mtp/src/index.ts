// @dsv3/mtp: multi-token prediction (DeepSeek-V3 §2.2): MTP modules over a pluggable decoder block, the
// MTP loss with its λ schedule, the checkpoint name mapping, a seeded sampler, and speculative decoding
// with MTP drafts, and sampling on the device (one op, CPU and WGSL kernels). Test helpers (reference block, tiny LM) live in `@dsv3/mtp/testing`.
import './register.js';

export type { BlockContext, DecoderBlock } from './block.js';
export {
  MTPModule,
  MTPSharedHead,
  MultiTokenPredictor,
  type MTPForward,
  type MTPForwardOptions,
  type MTPModuleOptions,
  type MTPOutput,
  type MultiTokenPredictorOptions,
  type OutputHead,
  type SharedWeights,
  type TokenEmbedding,
} from './mtp-module.js';
export {
  constantLambda,
  deepseekV3Lambda,
  mtpLoss,
  piecewiseLambda,
  type LambdaSchedule,
  type MTPLossOptions,
  type MTPLossResult,
} from './loss.js';
export {
  mtpFromCheckpointName,
  mtpStateDictFromCheckpoint,
  mtpStateDictToCheckpoint,
  mtpToCheckpointName,
  SHARED_COPY_NAMES,
  type MTPCheckpointOptions,
  type MTPLoadResult,
} from './checkpoint.js';
export {
  argmax,
  checkSampling,
  isGreedy,
  probabilities,
  sampleFrom,
  Sampler,
  type SamplingOptions,
} from './sampler.js';
export {
  AcceptanceStats,
  generate,
  SpeculativeDecoder,
  verifyGreedy,
  verifyStochastic,
  type GenerateOptions,
  type GenerateResult,
  type LogitsRows,
  type SpeculativeModel,
  type SpeculativeOptions,
  type StepOutput,
  type Verdict,
} from './speculative.js';
export {
  readTokens,
  sampleTokens,
  samplingTensors,
  type RowSampling,
  type SamplingTensors,
} from './device-sampler.js';
export { readVerdicts, verifyDrafts, type VerifyRow } from './device-verify.js';
export { SAMPLE_OP, VERIFY_OP } from './register.js';
export { uniformOf } from './sample-kernel-cpu.js';
