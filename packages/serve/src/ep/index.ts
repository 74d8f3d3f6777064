// Expert-parallel serving: MoE layers sharded over an EP group with EPLB-placed redundant experts.
export { ExpertParallelMoE, type EpLayerStats } from './ep-moe.js';
export { ExpertParallelServer, type ExpertParallelOptions, type Replacement, type RunHooks } from './ep-server.js';
export { ExpertParallelFrontCore, serveExpertParallelRank } from './ep-front.js';
export { ExpertShard, logicalExperts, startupKeep, startupPlacement, type ShardBytes } from './expert-shard.js';
export { eplbPlacement, roundRobinPlacement, rankLoads, imbalance, type ExpertPlacement } from './placement.js';
