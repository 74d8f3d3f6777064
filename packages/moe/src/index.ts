// @dsv3/moe: DeepSeekMoE: group-limited sigmoid gating, aux-loss-free balancing, dispatch, EPLB.
// Pure algorithms on typed arrays (no Tensor dependency); the Tensor-level MoE layer builds on these.
export {
  computeScores,
  gateRoute,
  gateRouteFromScores,
  nodeLimitedRoute,
  nodeLimitedRouteFromScores,
  nodesPerToken,
  tokensOf,
} from './routing';
export type { GateConfig, GroupScoreRule, NodeLimitedConfig, RouteResult, ScoringFunc } from './routing';
export { expertLoad, maxVio, MaxVioTracker, sequenceBalanceLoss, updateBias } from './balance';
export type { SeqBalanceLossOptions, SeqBalanceLossResult, UpdateBiasOptions } from './balance';
export { combineRows, dispatchPlan, permuteRows } from './dispatch';
export type { DispatchPlan } from './dispatch';
export { balancedPacking, gpuLoads, rebalanceExperts, replicateExperts } from './eplb';
export type { GpuLoadStats, PackingResult, RebalanceResult, ReplicationResult } from './eplb';
