export * from './types.js';
export { buildSchedule, scheduleError, stageCount, stageHolders, chunkOwner } from './schedule.js';
export { simulate, type OpCosts, type RankReport, type SimulationResult, type TimedOp } from './simulate.js';
export { splitBackward, splitBackwardAsync, type SplitBackwardResult } from './split-backward.js';
export { inMemoryChannels, type PointToPoint } from './channels.js';
export {
  runPipelineStep,
  syncReplicaGradients,
  type PipelineStage,
  type PipelineStepOptions,
  type PipelineStepResult,
} from './executor.js';
export { groupPointToPoint, PIPELINE_TAG } from './group-p2p.js';
