// @dsv3/train: DeepSeek-V3's training recipe on @dsv3/model's network.
export {
  parseTrainConfig,
  trainConfigSchema,
  TrainConfigError,
  type TrainConfig,
  type TrainConfigInput,
} from './config.js';
export { PRESET_CONFIGS, PRESET_MODELS, type TrainPreset } from './presets.js';
export { learningRate, batchSequences, mtpLambda, biasUpdateSpeed } from './schedule.js';
export { TokenStream, hashUnit, type DataPosition, type StreamOptions } from './data/stream.js';
export { listSourceFiles, readDocuments, type Document, type SourceFile } from './data/documents.js';
export { BUILTIN_CORPUS, brownFiles, untagBrown } from './data/brown.js';
export { buildModel, buildTokenizer, modelConfigOf, modelHfConfig, architectureDiff } from './model.js';
export { applyPrecision, type Precision } from './precision.js';
export { applyRecompute, recomputed } from './recompute.js';
export { trainStep, evaluate, moeLayers, batchTensor, type StepInputs, type StepResult } from './step.js';
export {
  saveCheckpoint,
  findResumePoint,
  listCheckpoints,
  stepDirName,
  TRAINER_STATE_FILE,
  OPTIMIZER_FILE,
  type TrainerState,
  type ResumePoint,
} from './checkpoint.js';
export {
  MetricsLog,
  readMetrics,
  WALL_CLOCK_FIELDS,
  type MetricRecord,
  type StepRecord,
  type EvalRecord,
} from './metrics.js';
export { renderReport, writeReport, reportCharts, type ReportChart, type ReportMeta } from './report.js';
export { train, RunExistsError, type TrainOptions, type TrainResult, type TrainerHooks } from './trainer.js';
