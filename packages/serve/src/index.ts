// @dsv3/serve: the serving engine — continuous batching over the paged latent cache with prefix
// caching and preemption, per-request sampling on the device, MTP speculative decoding, incremental detokenization
// and chat templates — behind interfaces a multi-process engine can take over.
export { BlockManager, type BlockManagerOptions, type PrefixHit } from './block-manager.js';
export { Scheduler, type SchedulerOptions, type ScheduledChunk, type SchedulerOutput } from './scheduler.js';
export { ModelExecutor, type Executor, type DraftInput } from './executor.js';
export { argmaxOnDevice, pickTokens, StepPicks, type Picked, type StepRequest } from './device-sampling.js';
export {
  EngineCore,
  EngineCoreError,
  type EngineCoreOptions,
  type EngineCoreStats,
  type SpeculativeStats,
} from './engine-core.js';
export {
  Sequence,
  type EngineRequest,
  type RequestOutput,
  type FinishReason,
  type SequenceStatus,
} from './sequence.js';
export {
  RequestSampler,
  SamplingError,
  seedKey,
  defaultSamplingParams,
  validateSamplingParams,
  argmax,
  logSoftmax,
  type SamplingParams,
  type TokenLogprob,
  type SampleResult,
} from './sampling.js';
export {
  AsyncEngine,
  QueueFullError,
  EngineClosedError,
  RequestFailedError,
  EngineUnavailableError,
  type StepCore,
  type AsyncEngineOptions,
  type GenerateRequest,
  type GenerationChunk,
  type TextLogprob,
  type Usage,
} from './engine.js';
export { IncrementalDetokenizer, StopStringMatcher, type StopMatch } from './detokenizer.js';
export {
  ChatTemplate,
  ChatTemplateError,
  chatTemplateFor,
  deepseekV3ChatTemplate,
  PLAIN_CHAT_TEMPLATE,
  type ChatMessage,
  type ChatTemplateOptions,
} from './chat-template.js';
export * from './disagg/index.js';
export * from './ep/index.js';
