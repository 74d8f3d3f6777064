// The MoE layer shape the CPU benchmarks time: the V3-shaped benchmark checkpoint's (hidden 1024,
// 64 routed experts of width 256, 6 per token in 4 of 8 groups, one shared expert).
import type { MoEConfig } from '../src/index';

export const V3_MINI_MOE: MoEConfig = {
  hiddenSize: 1024,
  moeIntermediateSize: 256,
  nRoutedExperts: 64,
  numExpertsPerTok: 6,
  nGroup: 8,
  topkGroup: 4,
  normTopkProb: true,
  routedScalingFactor: 2.5,
  scoringFunc: 'sigmoid',
  nSharedExperts: 1,
};
