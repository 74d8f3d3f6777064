// Routing and dispatch as ops in core's kernel registry, so the whole MoE forward enqueues on any
// backend without reading anything back: the CPU kernels run the typed-array router and counting sort
// on their own inputs (bit-identical to gateRouteFromScores / dispatchPlan); the WebGPU kernels are in
// webgpu-route.ts.
import { CpuStorage, type Kernel, type KernelTensor } from '@dsv3/core';
import { dispatchPlan } from './dispatch';
import { gateRouteFromScores, routeWeightsFromScores, type GroupScoreRule, type ScoringFunc } from './routing';

/**
 * inputs [scores [T, E], bias [E]?, override [T, k] i32?] → [indices i32 [T, k], weights [T, k],
 * nanTokens i32 [1]]: the tokens whose scores hold a NaN (the CPU kernel throws on them instead, so 0
 * there; a GPU kernel cannot throw, so it counts them for the caller's next read).
 */
export const ROUTE_OP = 'moe.route';
/** inputs [indices i32 [T, k]] → [offsets i32 [E + 1], counts i32 [E], rows i32 [T·k], permutation i32 [T·k]]. */
export const DISPATCH_OP = 'moe.dispatch';

export interface RouteAttrs {
  numExperts: number;
  k: number;
  nGroup: number;
  topkGroup: number;
  groupScore: GroupScoreRule;
  normTopkProb: boolean;
  routedScalingFactor: number;
  scoringFunc: ScoringFunc;
  /** inputs[1] is the correction bias. */
  hasBias: boolean;
  /** the last input holds the experts to use ([T, k], already validated); only the weights are computed. */
  override: boolean;
}

export interface DispatchAttrs {
  numExperts: number;
}

type F = Float32Array | Float64Array;
const cpu = (t: KernelTensor) => (t.storage as CpuStorage).data;
const out = (data: Int32Array | F, shape: number[], dtype: KernelTensor['dtype']) => ({
  storage: new CpuStorage(data),
  shape,
  dtype,
});

export const routeCpu: Kernel<RouteAttrs> = (_b, inputs, a) => {
  const scores = cpu(inputs[0]!) as F;
  const E = a.numExperts;
  const T = scores.length / E;
  const k = a.k;
  let indices: Int32Array;
  let weights: F;
  if (a.override) {
    indices = cpu(inputs[inputs.length - 1]!) as Int32Array;
    for (let i = 0; i < scores.length; i++) {
      if (Number.isNaN(scores[i]))
        throw new Error(`gate scores of token ${Math.floor(i / E)} contain NaN (expert ${i % E})`);
    }
    weights = routeWeightsFromScores(scores, E, indices, k, a.normTopkProb, a.routedScalingFactor);
  } else {
    const s32 = scores instanceof Float32Array ? scores : Float32Array.from(scores);
    const r = gateRouteFromScores(s32, {
      nRoutedExperts: E,
      numExpertsPerTok: k,
      nGroup: a.nGroup,
      topkGroup: a.topkGroup,
      normTopkProb: a.normTopkProb,
      routedScalingFactor: a.routedScalingFactor,
      scoringFunc: a.scoringFunc,
      bias: a.hasBias ? (cpu(inputs[1]!) as Float32Array) : undefined,
      groupScore: a.groupScore,
    });
    indices = r.indices;
    weights =
      scores instanceof Float32Array
        ? r.weights
        : routeWeightsFromScores(scores, E, indices, k, a.normTopkProb, a.routedScalingFactor);
  }
  return [out(indices, [T, k], 'i32'), out(weights, [T, k], inputs[0]!.dtype), out(new Int32Array(1), [1], 'i32')];
};

export const dispatchCpu: Kernel<DispatchAttrs> = (_b, [indices], { numExperts }) => {
  const idx = cpu(indices!) as Int32Array;
  const k = indices!.shape[1]!;
  const p = dispatchPlan(idx, k, numExperts);
  const n = idx.length;
  return [
    out(p.offsets, [numExperts + 1], 'i32'),
    out(p.counts, [numExperts], 'i32'),
    out(p.sortedTokens, [n], 'i32'),
    out(p.permutation, [n], 'i32'),
  ];
};
