export * from './types.js';
export { buildSchedule, scheduleError, stageCount, chunkOwner } from './schedule.js';
export { simulate, type OpCosts, type RankReport, type SimulationResult, type TimedOp } from './simulate.js';
