// @dsv3/moe: DeepSeekMoE: group-limited sigmoid gating, aux-loss-free balancing, dispatch, EPLB.
// Pure algorithms on typed arrays (routing, balance, dispatch, eplb) and the Tensor-level layer built on them.
// Importing the package registers its kernels (register.ts).
import './register';

export {
  computeScores,
  gateRoute,
  gateRouteFromScores,
  nodeLimitedRoute,
  nodeLimitedRouteFromScores,
  nodesPerToken,
  routeWeightsFromScores,
  tokensOf,
} from './routing';
export type { GateConfig, GroupScoreRule, NodeLimitedConfig, RouteResult, ScoringFunc } from './routing';
export { expertLoad, maxVio, MaxVioTracker, sequenceBalanceLoss, updateBias } from './balance';
export type { SeqBalanceLossOptions, SeqBalanceLossResult, UpdateBiasOptions } from './balance';
export { combineRows, dispatchPlan, permuteRows } from './dispatch';
export type { DispatchPlan } from './dispatch';
export { balancedPacking, gpuLoads, rebalanceExperts, replicateExperts } from './eplb';
export type { GpuLoadStats, PackingResult, RebalanceResult, ReplicationResult } from './eplb';

// Tensor-level layer (builds on @dsv3/core).
export {
  moeConfigFromHf,
  moeConfigFromModel,
  MoEConfigError,
  resolveMoEConfig,
  validateGateConfig,
  validateMoEConfig,
} from './config';
export type { HfMoEConfig, MoEConfig, MoEGateConfig, MoEModelFields, TopkMethod } from './config';
export { MoEGate, routingWeightsTensor } from './gate';
export { dispatchTensors, routeTensors } from './device-route';
export type { DeviceDispatch } from './device-route';
export { DISPATCH_OP, ROUTE_OP } from './route-kernels';
export type { DispatchAttrs, RouteAttrs } from './route-kernels';
export type { GateOutput, MoEGateOptions, RouteOptions } from './gate';
export { MoE, runMoE } from './moe';
export type {
  DistributedMoEForward,
  Expert,
  MoEForwardOptions,
  MoEOptions,
  MoEOutput,
  MoERouting,
} from './moe';
export { FP8SwiGLU } from './fp8-expert';
export { Fp8ExpertProjection, Fp8TrainedProjection } from './grouped-fp8';
export type { Fp8Experts, Fp8ProjectionOptions } from './grouped-fp8';
export type { Fp8ExpertOptions } from './fp8-expert';
export { groupedLinear, fusedGroupedSupports, hasGroupedKernel } from './grouped';
export type { GroupedImpl, GroupedLinearOptions } from './grouped';
export { GROUPED_MATMUL_OP, GROUPED_WEIGHT_GRAD_OP, newStackCache } from './grouped-kernels';
export type { GroupedMatmulAttrs, GroupedWeightGradAttrs, StackCache } from './grouped-kernels';
export { sequenceBalanceLossT } from './seq-loss';
export type { SeqBalanceLossTOptions } from './seq-loss';
export { swiglu, weightedScatterAdd } from './fused';
export { COMBINE_OP, SWIGLU_OP } from './fused-kernels';
