// @dsv3/model: the DeepSeek-V3 network from a Hugging Face config and checkpoint.
export * from './config.js';
export * from './presets.js';
export * from './accounting.js';
export {
  benchGeneration,
  copyBandwidth,
  weightBytesPerToken,
  type GenerationBenchOptions,
  type GenerationBenchResult,
} from './bench.js';
export * from './weights.js';
export { DecoderLayer, runDecoderLayer, type LatentCacheRef, type LayerContext } from './decoder-layer.js';
export {
  DeepseekV3ForCausalLM,
  DeepseekV3Model,
  runCausalLM,
  type CausalLMOutput,
  type ForwardOptions,
  type StepOptions,
  type ModelOptions,
} from './model.js';
export { DEFAULT_WARMUP_TOKENS, WARMUP_DECODE_STEPS, warmUp, warmupTokensWithin } from './warm-up.js';
export {
  keepsResidentWeights,
  loadModel,
  prefillActivationsFor,
  readConfig,
  saveModel,
  checkpointName,
  useDeviceHalfWeights,
  type LoadOptions,
} from './loader.js';
export { generate, CachedModel, type GenerateOptions, type GenerateOutput } from './generate.js';
export {
  raggedStep,
  raggedMtpStep,
  type RaggedSegment,
  type RaggedStepOptions,
  type RaggedStepOutput,
} from './ragged-step.js';
export * from './tokenizer/index.js';
