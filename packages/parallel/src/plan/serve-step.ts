// The time of one serving step — one forward over a ragged batch of new tokens on a rank of an
// expert-parallel unit whose attention is data-parallel (each rank runs its own requests) and whose
// routed experts are sharded over the ranks — from the model's accounting and the cluster description:
// the fixed cost of launching the step's operators, the larger of its FLOPs at the compute rate and
// its memory traffic at the memory bandwidth (the weights it touches once per step, the experts its
// batch reaches, the latent cache its attention reads), and the two all-to-alls of each MoE layer.
import { countParameters, isMoeLayer, type ModelConfig } from '@dsv3/model';
import type { ClusterSpec } from './cluster.js';
import { parameterSplit } from './memory.js';

/** What one rank runs in one step. */
export interface StepWork {
  /** New tokens fed to the model (prompt chunks and one per decoding sequence). */
  tokens: number;
  /** (new token, cached key) pairs its attention scores: Σ over new tokens of the keys each attends. */
  keyPairs: number;
  /** Latent-cache rows its attention reads: Σ over its sequences of their length after the step. */
  cacheRows: number;
  /** Rows that go through the output head (the last of each sequence's chunk). */
  logitRows: number;
}

export interface ServeNumerics {
  /** Bytes per weight element as served (f32 4, BF16 2, FP8 1) and per cached latent element. */
  weightBytes: number;
  kvBytes: number;
  /** Bytes per activation element crossing the all-to-all. */
  activationBytes: number;
}

export interface StepCost {
  total: number;
  fixed: number;
  compute: number;
  memory: number;
  allToAll: number;
}

/** Expected distinct experts, of `experts`, that `tokens` tokens reach when each picks `k` of them (independently). */
export function expertsTouched(experts: number, k: number, tokens: number): number {
  return experts * (1 - (1 - k / experts) ** tokens);
}

/** One-way latency of an all-to-all among `ranks` ranks: one message to each peer in turn. */
export const allToAllLatency = (cl: ClusterSpec, ranks: number): number => (ranks - 1) * cl.linkLatency;

/**
 * Seconds of one lockstep step of an expert-parallel unit of `works.length` ranks (one rank: a plain
 * engine): each rank's own step, the slowest setting the pace, plus the dispatch and combine of every
 * MoE layer over the unit (one latency per peer and the bytes of the routed copies that leave a rank)
 * and one small all-to-all that starts the step (new requests, outputs).
 */
export function serveStepSeconds(
  c: ModelConfig,
  cl: ClusterSpec,
  n: ServeNumerics,
  works: readonly StepWork[],
): StepCost {
  const ranks = works.length;
  const p = countParameters(c);
  const split = parameterSplit(c);
  let moeLayers = 0;
  for (let i = 0; i < c.numHiddenLayers; i++) if (isMoeLayer(c, i)) moeLayers++;
  const h = c.hiddenSize;
  const allTokens = works.reduce((a, w) => a + w.tokens, 0);
  const routedMatmul = moeLayers * c.numExpertsPerTok * p.moePerLayer.routedExpert;
  const headMatmul = c.vocabSize * h;
  const denseMatmul = p.activatedMatmul - routedMatmul - headMatmul;
  // every weight but the routed experts is read once a step; the embedding is only gathered from
  const denseBytes = (split.replicated - p.embedding) * n.weightBytes;
  // absorbed MLA over the latent cache: per head and key, a score over d_c + d_R and a value over d_c
  const perKeyPair = c.numHiddenLayers * 2 * c.numHeads * (2 * c.kvLoraRank + c.qkRopeHeadDim);
  const kvRowBytes = c.numHiddenLayers * (c.kvLoraRank + c.qkRopeHeadDim) * n.kvBytes;
  // the routed experts' work is spread over the unit (placement balanced): each rank computes 1/ranks of all pairs
  const routedFlops = (2 * allTokens * routedMatmul) / ranks;
  const expertsPerRank = c.nRoutedExperts / ranks;
  const touchedPerLayer = expertsTouched(c.nRoutedExperts, c.numExpertsPerTok, allTokens) / ranks;
  const routedBytes =
    moeLayers * Math.min(expertsPerRank, touchedPerLayer) * p.moePerLayer.routedExpert * n.weightBytes;
  const fixed = (c.numHiddenLayers + 1) * cl.opsPerLayer * cl.opOverhead;
  const rate = cl.flops[cl.gemmPrecision] * cl.computeEfficiency;
  let slowest: StepCost = { total: 0, fixed, compute: 0, memory: 0, allToAll: 0 };
  for (const w of works) {
    const flops = 2 * w.tokens * denseMatmul + 2 * w.logitRows * headMatmul + w.keyPairs * perKeyPair + routedFlops;
    const compute = flops / rate;
    const memory = (denseBytes + routedBytes + w.cacheRows * kvRowBytes) / cl.hbmBandwidth;
    const total = fixed + Math.max(compute, memory);
    if (total > slowest.total || slowest.total === 0) slowest = { total, fixed, compute, memory, allToAll: 0 };
  }
  if (ranks === 1 || allTokens === 0) return slowest;
  // each token's k routed copies: (ranks−1)/ranks of them leave its rank, out and back
  const maxTokens = Math.max(...works.map((w) => w.tokens));
  const bytes = maxTokens * c.numExpertsPerTok * ((ranks - 1) / ranks) * h * n.activationBytes;
  const allToAll = allToAllLatency(cl, ranks) * (2 * moeLayers + 1) + (2 * moeLayers * bytes) / cl.ibBandwidth;
  return { ...slowest, total: slowest.total + allToAll, allToAll };
}
