// Gate routing math of DeepSeekMoE on typed arrays: scores, group-limited (V3) and node-limited top-k.
//
// Everything here follows DeepSeek-V3's `inference/model.py` Gate, in float32:
//   s      = sigmoid(logits)            (or softmax over the experts, V2 style)
//   choice = s + bias                   (bias only steers the selection)
//   group score = sum of the top-2 choice scores of the group (max of the group when there is no bias,
//                 as DeepSeek's Gate does for V2-style models)
//   keep the top `topkGroup` groups (the others are excluded, i.e. -inf), top-k experts of the rest,
//   weights = s of the chosen experts, normalized to sum 1 when `normTopkProb`, times `routedScalingFactor`.
// Ties are broken deterministically: the lowest index wins, for groups and for experts. Returned experts
// are ordered by descending choice score (ties: lowest index first).

export type ScoringFunc = 'sigmoid' | 'softmax';

/** How a group (or node) is scored from the choice scores of its experts. */
export type GroupScoreRule = 'top2sum' | 'max';

export interface GateConfig {
  /** E: number of routed experts (the row length of the logits/scores). */
  nRoutedExperts: number;
  /** k: experts per token. */
  numExpertsPerTok: number;
  /** Number of expert groups (E must be divisible by it). 1 disables group limiting. */
  nGroup: number;
  /** Groups kept per token. */
  topkGroup: number;
  /**
   * Normalize the k chosen scores to sum 1 before scaling. DeepSeek's own code does this for sigmoid
   * scoring and not for softmax, so V3 uses `true` and V2-style softmax gates normally `false`.
   * (The sum gets Hugging Face's +1e-20 guard; it changes nothing for any sum above ~1e-13.)
   */
  normTopkProb: boolean;
  /** Multiplies the weights last (2.5 in V3). */
  routedScalingFactor: number;
  scoringFunc: ScoringFunc;
  /** e_score_correction_bias [E]: added to the scores for selection only. */
  bias?: Float32Array | undefined;
  /**
   * Group score rule. Default: `'top2sum'` when a bias is given, `'max'` without one (DeepSeek's Gate).
   * With groups of one expert, 'top2sum' is that expert's score.
   */
  groupScore?: GroupScoreRule | undefined;
}

export interface RouteResult {
  /** [T, k] chosen experts, by descending choice score (ties: lowest index first). */
  indices: Int32Array;
  /** [T, k] combine weights, aligned with `indices`. */
  weights: Float32Array;
  /** [T, E] the scores s (sigmoid/softmax output, without bias). */
  scores: Float32Array;
  numTokens: number;
  k: number;
}

const f32 = Math.fround;

function checkPositiveInt(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive integer, got ${v}`);
}

/** Number of tokens of a flat [T, E] array; throws when the length does not fit. */
export function tokensOf(arr: ArrayLike<number>, numExperts: number, what = 'scores'): number {
  checkPositiveInt('nRoutedExperts', numExperts);
  if (arr.length % numExperts !== 0) {
    throw new Error(`${what} length ${arr.length} is not a multiple of nRoutedExperts=${numExperts} (expected [T, E])`);
  }
  return arr.length / numExperts;
}

/**
 * Scores from gate logits [T, E], in float32: sigmoid per element, or softmax over each row.
 * Throws on NaN logits (naming the token) and on rows whose softmax is not finite.
 */
export function computeScores(logits: Float32Array, numExperts: number, scoringFunc: ScoringFunc): Float32Array {
  const T = tokensOf(logits, numExperts, 'logits');
  const E = numExperts;
  const out = new Float32Array(logits.length);
  for (let t = 0; t < T; t++) {
    const base = t * E;
    for (let e = 0; e < E; e++) {
      if (Number.isNaN(logits[base + e])) throw new Error(`gate logits of token ${t} contain NaN (expert ${e})`);
    }
    if (scoringFunc === 'sigmoid') {
      for (let e = 0; e < E; e++) out[base + e] = 1 / (1 + Math.exp(-(logits[base + e] as number)));
    } else if (scoringFunc === 'softmax') {
      let m = -Infinity;
      for (let e = 0; e < E; e++) m = Math.max(m, logits[base + e] as number);
      let z = 0;
      for (let e = 0; e < E; e++) z += Math.exp((logits[base + e] as number) - m);
      for (let e = 0; e < E; e++) {
        const v = Math.exp((logits[base + e] as number) - m) / z;
        if (!Number.isFinite(v)) throw new Error(`softmax scores of token ${t} are not finite (infinite logits?)`);
        out[base + e] = v;
      }
    } else {
      throw new Error(`unknown scoringFunc ${String(scoringFunc)} (expected 'sigmoid' or 'softmax')`);
    }
  }
  return out;
}

/**
 * Internal description of a limited top-k: experts split into `nUnits` contiguous units (groups or nodes).
 * Exported for the frozen reference loop in test/frozen-route.ts only (not from the package's index).
 */
export interface LimitedSpec {
  E: number;
  k: number;
  nUnits: number;
  keepUnits: number;
  /** unit score: sum of the top `unitTop` choice scores of the unit, or its max when rule is 'max'. */
  rule: GroupScoreRule | 'topsum';
  unitTop: number;
  normTopkProb: boolean;
  routedScalingFactor: number;
  bias: Float32Array | undefined;
}

function checkBias(bias: Float32Array | undefined, E: number): void {
  if (bias === undefined) return;
  if (bias.length !== E) throw new Error(`bias length ${bias.length} != nRoutedExperts=${E}`);
  for (let e = 0; e < E; e++) {
    if (!Number.isFinite(bias[e])) throw new Error(`bias of expert ${e} is not finite (${bias[e]})`);
  }
}

/** true when (va, ia) ranks before (vb, ib): larger value first, then lower index. */
function before(va: number, ia: number, vb: number, ib: number): boolean {
  return va > vb || (va === vb && ia < ib);
}

// One token's scratch, reused from call to call (a prefill routes 512 tokens a layer).
let choice = new Float32Array(0);
let choiceBits = new Int32Array(0);
let unitScore = new Float32Array(0);
let unitOrder = new Int32Array(0);
let allowed = new Uint8Array(0);
let topVals = new Float64Array(0);
let selIdx = new Int32Array(0);
let selVal = new Float64Array(0);

function scratchFor(E: number, nUnits: number, unitTop: number, k: number): void {
  if (choice.length < E) {
    choice = new Float32Array(E);
    choiceBits = new Int32Array(choice.buffer);
  }
  if (unitScore.length < nUnits) {
    unitScore = new Float32Array(nUnits);
    unitOrder = new Int32Array(nUnits);
    allowed = new Uint8Array(nUnits);
  }
  if (topVals.length < unitTop) topVals = new Float64Array(unitTop);
  if (selIdx.length < k) {
    selIdx = new Int32Array(k);
    selVal = new Float64Array(k);
  }
}

/**
 * A float32's bits (as int32) → an int32 ordered as the floats are (-0 just below +0; no NaN here);
 * its own inverse.
 */
const orderKey = (bits: number) => bits ^ ((bits >> 31) & 0x7fffffff);
const keyValue = new Float32Array(1);
const keyBits = new Int32Array(keyValue.buffer);

/**
 * Unit u's score from the choice scores of its `size` experts from u0: their max ('max'), or the f32
 * sum of the top `top` in descending order (kept by insertion; strict comparisons, so among equal
 * values the first seen stays ahead). The top-2 case (V3's groups) without the insertion: only the
 * two values' numbers reach the sum.
 */
function unitScoreOf(u0: number, size: number, rule: LimitedSpec['rule'], top: number): number {
  if (rule === 'max') {
    let sc = -Infinity;
    for (let j = 0; j < size; j++) sc = Math.max(sc, choice[u0 + j]!);
    return sc;
  }
  if (top === 2) {
    // The two largest values, compared as order keys of their bits: integer min / max without
    // branches (V8's float max / min and compares branch, mispredicting on half the elements). The keys order -0
    // before +0, which changes no sum's bits: f32(f32(0 + t0) + t1) is +0 for any two zeros.
    let a = orderKey(choiceBits[u0]!);
    let b = orderKey(choiceBits[u0 + 1]!);
    let m = -(a < b) & (a ^ b);
    let t0 = a ^ m;
    let t1 = b ^ m;
    for (let j = u0 + 2, end = u0 + size; j < end; j++) {
      const v = orderKey(choiceBits[j]!);
      m = -(t0 < v) & (t0 ^ v);
      const lo = v ^ m; // min(t0, v)
      t0 ^= m; // max(t0, v)
      t1 ^= -(t1 < lo) & (t1 ^ lo); // max(t1, lo)
    }
    keyBits[0] = orderKey(t0);
    a = keyValue[0]!;
    keyBits[0] = orderKey(t1);
    b = keyValue[0]!;
    return f32(f32(0 + a) + b);
  }
  let n = 0;
  for (let j = 0; j < size; j++) {
    const v = choice[u0 + j]!;
    if (n < top) {
      let p = n++;
      while (p > 0 && topVals[p - 1]! < v) {
        topVals[p] = topVals[p - 1]!;
        p--;
      }
      topVals[p] = v;
    } else if (v > topVals[top - 1]!) {
      let p = top - 1;
      while (p > 0 && topVals[p - 1]! < v) {
        topVals[p] = topVals[p - 1]!;
        p--;
      }
      topVals[p] = v;
    }
  }
  let sc = 0;
  for (let j = 0; j < n; j++) sc = f32(sc + topVals[j]!);
  return sc;
}

/**
 * Marks the top `keep` of the units' scores as allowed (ties: lowest unit id): a unit is kept when fewer
 * than `keep` units rank before it, counted without branches. A NaN score (an infinite choice score of
 * each sign in one unit) has no rank: then the insertion order of the reference decides.
 */
function keepTopUnits(nUnits: number, keep: number): void {
  let nan = false;
  for (let u = 0; u < nUnits; u++) {
    const v = unitScore[u]!;
    nan ||= v !== v;
    let ahead = 0;
    for (let w = 0; w < u; w++) ahead += +(unitScore[w]! >= v);
    for (let w = u + 1; w < nUnits; w++) ahead += +(unitScore[w]! > v);
    allowed[u] = +(ahead < keep);
  }
  if (nan) keepTopUnitsByInsertion(nUnits, keep);
}

/** keepTopUnits by an insertion sort on (score desc, id asc): the reference's steps, NaN included. */
function keepTopUnitsByInsertion(nUnits: number, keep: number): void {
  for (let u = 0; u < nUnits; u++) unitOrder[u] = u;
  for (let i = 1; i < nUnits; i++) {
    const u = unitOrder[i]!;
    const v = unitScore[u]!;
    let p = i;
    while (p > 0 && before(v, u, unitScore[unitOrder[p - 1]!]!, unitOrder[p - 1]!)) {
      unitOrder[p] = unitOrder[p - 1]!;
      p--;
    }
    unitOrder[p] = u;
  }
  allowed.fill(0, 0, nUnits);
  for (let i = 0; i < keep; i++) allowed[unitOrder[i]!] = 1;
}

/**
 * Inserts the experts [e0, e1) into the kept top-k (value desc, index asc) holding n; returns the new n.
 * Experts arrive in ascending index, so an equal value never ranks before a kept one: `>` is the whole
 * rule (the choice scores hold no NaN: finite scores plus a finite bias).)
 */
function insertTopK(e0: number, e1: number, k: number, n: number): number {
  for (let e = e0; e < e1; e++) {
    const v = choice[e]!;
    if (n === k && !(v > selVal[k - 1]!)) continue;
    let p = n < k ? n++ : k - 1;
    while (p > 0 && v > selVal[p - 1]!) {
      selVal[p] = selVal[p - 1]!;
      selIdx[p] = selIdx[p - 1]!;
      p--;
    }
    selVal[p] = v;
    selIdx[p] = e;
  }
  return n;
}

function limitedRoute(scores: Float32Array, spec: LimitedSpec): RouteResult {
  const { E, k, nUnits, keepUnits, rule, normTopkProb, routedScalingFactor, bias } = spec;
  const T = tokensOf(scores, E, 'scores');
  checkBias(bias, E);
  const unitSize = E / nUnits;
  const unitTop = Math.min(spec.unitTop, unitSize);
  const indices = new Int32Array(T * k);
  const weights = new Float32Array(T * k);
  scratchFor(E, nUnits, unitTop, k);
  const limit = nUnits > 1 && keepUnits < nUnits;

  for (let t = 0; t < T; t++) {
    const base = t * E;
    // the choice scores, checking the scores for NaN on the way (the first NaN in token order is named)
    for (let e = 0; e < E; e++) {
      const s = scores[base + e]!;
      if (s !== s) throw new Error(`gate scores of token ${t} contain NaN (expert ${e})`);
      choice[e] = bias === undefined ? s : f32(s + bias[e]!);
    }

    let n = 0;
    if (limit) {
      for (let u = 0; u < nUnits; u++) unitScore[u] = unitScoreOf(u * unitSize, unitSize, rule, unitTop);
      keepTopUnits(nUnits, keepUnits);
      for (let u = 0; u < nUnits; u++) if (allowed[u] === 1) n = insertTopK(u * unitSize, (u + 1) * unitSize, k, n);
    } else n = insertTopK(0, E, k, 0);
    if (n < k) throw new Error(`internal: only ${n} experts available for token ${t}`);

    let sum = 0;
    for (let j = 0; j < k; j++) {
      const w = scores[base + selIdx[j]!]!;
      weights[t * k + j] = w;
      indices[t * k + j] = selIdx[j]!;
      sum = f32(sum + w);
    }
    const denom = f32(sum + 1e-20);
    for (let j = 0; j < k; j++) {
      let w = weights[t * k + j]!;
      if (normTopkProb) w = f32(w / denom);
      weights[t * k + j] = w * routedScalingFactor;
    }
  }
  return { indices, weights, scores, numTokens: T, k };
}

function validateGate(cfg: GateConfig): void {
  const E = cfg.nRoutedExperts;
  checkPositiveInt('nRoutedExperts', E);
  checkPositiveInt('numExpertsPerTok', cfg.numExpertsPerTok);
  checkPositiveInt('nGroup', cfg.nGroup);
  checkPositiveInt('topkGroup', cfg.topkGroup);
  if (E % cfg.nGroup !== 0) throw new Error(`nRoutedExperts=${E} is not divisible by nGroup=${cfg.nGroup}`);
  if (cfg.topkGroup > cfg.nGroup) throw new Error(`topkGroup=${cfg.topkGroup} > nGroup=${cfg.nGroup}`);
  const avail = cfg.topkGroup * (E / cfg.nGroup);
  if (cfg.numExpertsPerTok > avail) {
    throw new Error(
      `numExpertsPerTok=${cfg.numExpertsPerTok} > experts in the kept groups (topkGroup*E/nGroup = ${avail})`,
    );
  }
  if (!Number.isFinite(cfg.routedScalingFactor)) throw new Error(`routedScalingFactor must be finite`);
  if (cfg.scoringFunc !== 'sigmoid' && cfg.scoringFunc !== 'softmax') {
    throw new Error(`unknown scoringFunc ${String(cfg.scoringFunc)} (expected 'sigmoid' or 'softmax')`);
  }
  if (cfg.groupScore !== undefined && cfg.groupScore !== 'top2sum' && cfg.groupScore !== 'max') {
    throw new Error(`unknown groupScore ${String(cfg.groupScore)} (expected 'top2sum' or 'max')`);
  }
}

/**
 * Group-limited routing from precomputed scores s [T, E] (sigmoid or softmax output; `scoringFunc` is
 * then only validated). See the module comment for the exact rule.
 */
export function gateRouteFromScores(scores: Float32Array, cfg: GateConfig): RouteResult {
  validateGate(cfg);
  const rule: GroupScoreRule = cfg.groupScore ?? (cfg.bias === undefined ? 'max' : 'top2sum');
  return limitedRoute(scores, {
    E: cfg.nRoutedExperts,
    k: cfg.numExpertsPerTok,
    nUnits: cfg.nGroup,
    keepUnits: cfg.topkGroup,
    rule,
    unitTop: rule === 'max' ? 1 : 2,
    normTopkProb: cfg.normTopkProb,
    routedScalingFactor: cfg.routedScalingFactor,
    bias: cfg.bias,
  });
}

/** DeepSeek-V3 gate from logits u·e_i [T, E]: scores (float32) then group-limited top-k. */
export function gateRoute(logits: Float32Array, cfg: GateConfig): RouteResult {
  validateGate(cfg);
  const scores = computeScores(logits, cfg.nRoutedExperts, cfg.scoringFunc);
  return gateRouteFromScores(scores, cfg);
}

export interface NodeLimitedConfig {
  nRoutedExperts: number;
  /** K: experts per token. */
  numExpertsPerTok: number;
  /** Number of nodes; expert e lives on node floor(e / (E / nNodes)). */
  nNodes: number;
  /** M: a token is sent to at most this many nodes (4 in V3). */
  maxNodesPerToken: number;
  /**
   * A node is ranked by the sum of the top `topPerNode` choice scores of its experts.
   * Default K/M (must then be an integer); V3: 8/4 = 2.
   */
  topPerNode?: number | undefined;
  normTopkProb: boolean;
  routedScalingFactor: number;
  scoringFunc: ScoringFunc;
  bias?: Float32Array | undefined;
}

function nodeSpec(cfg: NodeLimitedConfig): LimitedSpec {
  const E = cfg.nRoutedExperts;
  const K = cfg.numExpertsPerTok;
  checkPositiveInt('nRoutedExperts', E);
  checkPositiveInt('numExpertsPerTok', K);
  checkPositiveInt('nNodes', cfg.nNodes);
  checkPositiveInt('maxNodesPerToken', cfg.maxNodesPerToken);
  if (E % cfg.nNodes !== 0) throw new Error(`nRoutedExperts=${E} is not divisible by nNodes=${cfg.nNodes}`);
  if (cfg.maxNodesPerToken > cfg.nNodes) {
    throw new Error(`maxNodesPerToken=${cfg.maxNodesPerToken} > nNodes=${cfg.nNodes}`);
  }
  const avail = cfg.maxNodesPerToken * (E / cfg.nNodes);
  if (K > avail) throw new Error(`numExpertsPerTok=${K} > experts on the kept nodes (M*E/nNodes = ${avail})`);
  let top = cfg.topPerNode;
  if (top === undefined) {
    if (K % cfg.maxNodesPerToken !== 0) {
      throw new Error(
        `numExpertsPerTok=${K} is not divisible by maxNodesPerToken=${cfg.maxNodesPerToken}; pass topPerNode`,
      );
    }
    top = K / cfg.maxNodesPerToken;
  }
  checkPositiveInt('topPerNode', top);
  if (!Number.isFinite(cfg.routedScalingFactor)) throw new Error(`routedScalingFactor must be finite`);
  if (cfg.scoringFunc !== 'sigmoid' && cfg.scoringFunc !== 'softmax') {
    throw new Error(`unknown scoringFunc ${String(cfg.scoringFunc)} (expected 'sigmoid' or 'softmax')`);
  }
  return {
    E,
    k: K,
    nUnits: cfg.nNodes,
    keepUnits: cfg.maxNodesPerToken,
    rule: 'topsum',
    unitTop: top,
    normTopkProb: cfg.normTopkProb,
    routedScalingFactor: cfg.routedScalingFactor,
    bias: cfg.bias,
  };
}

/**
 * Node-limited routing (V3 training): each token goes to at most M nodes, nodes ranked by the sum of
 * the top K/M choice scores of their experts (ties: lowest node id), then top-K among the experts of
 * the kept nodes. Weights as in {@link gateRouteFromScores}. With nodes = groups and K/M = 2 this is
 * exactly V3's group-limited gate.
 */
export function nodeLimitedRouteFromScores(scores: Float32Array, cfg: NodeLimitedConfig): RouteResult {
  return limitedRoute(scores, nodeSpec(cfg));
}

/** {@link nodeLimitedRouteFromScores} from logits. */
export function nodeLimitedRoute(logits: Float32Array, cfg: NodeLimitedConfig): RouteResult {
  const spec = nodeSpec(cfg);
  return limitedRoute(computeScores(logits, cfg.nRoutedExperts, cfg.scoringFunc), spec);
}

/** Number of distinct nodes each token's experts live on ([T]); experts contiguous per node. */
export function nodesPerToken(indices: Int32Array, k: number, numExperts: number, nNodes: number): Int32Array {
  checkPositiveInt('k', k);
  if (indices.length % k !== 0) throw new Error(`indices length ${indices.length} is not a multiple of k=${k}`);
  if (numExperts % nNodes !== 0) throw new Error(`numExperts=${numExperts} is not divisible by nNodes=${nNodes}`);
  const per = numExperts / nNodes;
  const T = indices.length / k;
  const out = new Int32Array(T);
  const seen = new Uint8Array(nNodes);
  for (let t = 0; t < T; t++) {
    seen.fill(0);
    let c = 0;
    for (let j = 0; j < k; j++) {
      const node = ((indices[t * k + j] as number) / per) | 0;
      if (seen[node] === 0) {
        seen[node] = 1;
        c++;
      }
    }
    out[t] = c;
  }
  return out;
}

/**
 * Weights of the chosen experts from host scores, with the router's arithmetic: float32 running sum,
 * denominator sum + 1e-20, w / denominator rounded to f32, times the scale (f64 throughout for f64).
 */
export function routeWeightsFromScores(
  scores: Float32Array | Float64Array,
  numExperts: number,
  indices: Int32Array,
  k: number,
  normTopkProb: boolean,
  scale: number,
): Float32Array | Float64Array {
  const T = indices.length / k;
  const wide = scores instanceof Float64Array;
  const out = wide ? new Float64Array(T * k) : new Float32Array(T * k);
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let j = 0; j < k; j++) {
      const w = scores[t * numExperts + indices[t * k + j]!]!;
      out[t * k + j] = w;
      s = wide ? s + w : f32(s + w);
    }
    const denom = wide ? s + 1e-20 : f32(s + 1e-20);
    for (let j = 0; j < k; j++) {
      let w = out[t * k + j]!;
      if (normTopkProb) w = wide ? w / denom : f32(w / denom);
      out[t * k + j] = w * scale;
    }
  }
  return out;
}
