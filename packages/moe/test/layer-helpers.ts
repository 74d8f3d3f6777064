// Helpers of the Tensor-level tests: a float64 per-token reference of the MoE layer, and a central
// finite-difference gradient check on module parameters and inputs.
import { expect } from 'vitest';
import { mul, noGrad, Rng, sum, tensor, type Parameter, type Tensor } from '@dsv3/core';
import { finiteDifferenceCheck, parameterGradientCheck, relativeError as relErr } from '@dsv3/core/testing';

export { relErr };
import type { MoE, MoEConfig } from '../src/index';
import { refRoute } from './helpers';

export function randValues(n: number, seed: number, std = 1): Float64Array {
  return new Rng(seed).fillNormal(new Float64Array(n), 0, std) as Float64Array;
}

/**
 * The small MoE config the layer tests start from (24 wide, 8 experts in 4 groups keeping 2, top-2,
 * sigmoid, one shared expert); `over` replaces fields.
 */
export const moeConfig = (over: Partial<MoEConfig> = {}): MoEConfig => ({
  hiddenSize: 24,
  moeIntermediateSize: 12,
  nRoutedExperts: 8,
  numExpertsPerTok: 2,
  nGroup: 4,
  topkGroup: 2,
  normTopkProb: true,
  routedScalingFactor: 2.5,
  scoringFunc: 'sigmoid',
  nSharedExperts: 1,
  ...over,
});

const host = (t: Tensor): Float64Array => Float64Array.from(t.dataSync());

function swiglu64(
  x: Float64Array,
  wg: Float64Array,
  wu: Float64Array,
  wd: Float64Array,
  H: number,
  I: number,
): Float64Array {
  const h = new Float64Array(I);
  for (let i = 0; i < I; i++) {
    let g = 0;
    let u = 0;
    for (let d = 0; d < H; d++) {
      g += wg[i * H + d]! * x[d]!;
      u += wu[i * H + d]! * x[d]!;
    }
    h[i] = (g / (1 + Math.exp(-g))) * u;
  }
  const y = new Float64Array(H);
  for (let d = 0; d < H; d++) {
    let s = 0;
    for (let i = 0; i < I; i++) s += wd[d * I + i]! * h[i]!;
    y[d] = s;
  }
  return y;
}

export interface RefResult {
  out: Float64Array;
  indices: number[][];
  weights: number[][];
}

/**
 * The MoE layer computed the plain way, token by token, in float64 from the module's weights: logits,
 * sigmoid/softmax, the brute-force group-limited router of helpers.ts, then Σ_j w_j·Expert_j(x_t) + Shared(x_t).
 */
export function referenceMoE(moe: MoE, x: Tensor): RefResult {
  const c = moe.config;
  const H = c.hiddenSize;
  const I = c.moeIntermediateSize;
  const E = c.nRoutedExperts;
  const xs = host(x);
  const T = xs.length / H;
  const W = host(moe.gate.weight.value);
  const bias = moe.gate.bias ? host(moe.gate.bias) : undefined;
  const scores = new Float64Array(T * E);
  for (let t = 0; t < T; t++) {
    const l = new Float64Array(E);
    for (let e = 0; e < E; e++) {
      let s = 0;
      for (let d = 0; d < H; d++) s += xs[t * H + d]! * W[e * H + d]!;
      l[e] = s;
    }
    if (c.scoringFunc === 'sigmoid') for (let e = 0; e < E; e++) scores[t * E + e] = 1 / (1 + Math.exp(-l[e]!));
    else {
      const m = Math.max(...l);
      let z = 0;
      for (let e = 0; e < E; e++) z += Math.exp(l[e]! - m);
      for (let e = 0; e < E; e++) scores[t * E + e] = Math.exp(l[e]! - m) / z;
    }
  }
  const rule = moe.gate.groupScore === 'max' ? 'max' : 2;
  const r = refRoute(scores, {
    E,
    k: c.numExpertsPerTok,
    nUnits: c.nGroup,
    keepUnits: c.topkGroup,
    unitRule: rule,
    normTopkProb: c.normTopkProb,
    scale: c.routedScalingFactor,
    bias,
  });
  const ex = moe.experts.items.map(
    (m) => [host(m.gateProj.weight!.value), host(m.upProj.weight!.value), host(m.downProj.weight!.value)] as const,
  );
  const sh = moe.sharedExperts;
  const shW = sh
    ? ([host(sh.gateProj.weight!.value), host(sh.upProj.weight!.value), host(sh.downProj.weight!.value)] as const)
    : null;
  const out = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    const xt = xs.subarray(t * H, (t + 1) * H);
    const acc = new Float64Array(H);
    r.indices[t]!.forEach((e, j) => {
      const [g, u, d] = ex[e]!;
      const y = swiglu64(xt, g, u, d, H, I);
      const w = r.weights[t]![j]!;
      for (let i = 0; i < H; i++) acc[i]! += w * y[i]!;
    });
    if (shW) {
      const y = swiglu64(xt, shW[0], shW[1], shW[2], H, I * c.nSharedExperts);
      for (let i = 0; i < H; i++) acc[i]! += y[i]!;
    }
    out.set(acc, t * H);
  }
  return { out, indices: r.indices, weights: r.weights };
}

/**
 * Checks d(sum(f() · R))/d(target) against central differences (float64), for up to `maxElems`
 * elements of each target spread evenly. Targets are parameters (perturbed through assign) or a leaf
 * input tensor (rebuilt). Returns the worst relative error.
 */
export function gradcheckTargets(
  name: string,
  f: (x: Tensor) => Tensor,
  x: Tensor,
  params: [string, Parameter][],
  opts: { h?: number; tol?: number; maxElems?: number; checkInput?: boolean } = {},
): number {
  const check = { h: opts.h ?? 1e-6, maxElems: opts.maxElems ?? 48 };
  let worst = 0;
  const report = (what: string, err: number): void => {
    worst = Math.max(worst, err);
    expect(err, `${name}: gradient of ${what} vs finite differences (rel ${err})`).toBeLessThan(opts.tol ?? 1e-6);
  };
  if (opts.checkInput ?? true) report('the input', finiteDifferenceCheck(f, [x], check)[0]!);
  const out = noGrad(() => f(x));
  const R = tensor(randValues(out.size, 777), { shape: [...out.shape], dtype: out.dtype });
  for (const r of parameterGradientCheck(() => sum(mul(f(x), R)), params, check)) report(r.name, r.error);
  return worst;
}
