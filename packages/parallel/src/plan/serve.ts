// Serving plan for a deployment unit (V3: prefill 32 GPUs, decode 320): expert placement by
// @dsv3/moe's EPLB, tokens per expert on each GPU with and without redundant experts, latent-KV
// capacity and a bandwidth-bound estimate of decode tokens/s per GPU.
import { Rng } from '@dsv3/core';
import { countParameters, isMoeLayer, kvBytesPerToken, type ModelConfig } from '@dsv3/model';
import { gpuLoads, rebalanceExperts } from '@dsv3/moe';
import type { ClusterSpec } from './cluster.js';
import { parameterSplit } from './memory.js';
import { crossNodeTraffic } from './traffic.js';

export interface ServeUnit {
  phase: 'prefill' | 'decode';
  gpus: number;
  /** Attention: tensor parallel degree inside each data-parallel attention group. */
  attentionTp: number;
  /** Physical expert slots beyond the logical experts (redundant copies, EPLB-chosen). */
  redundantSlots: number;
  /** Treat the shared expert as a routed one every token picks (V3's decode units). */
  sharedAsRouted: boolean;
  /** Tokens each attention group processes per step (prefill: prompt tokens; decode: sequences). */
  tokensPerGroup: number;
  /** Context length (decode: mean cached tokens per sequence). */
  context: number;
}

/** V3's prefill unit: 4 nodes, attention TP4 (+SP) DP8, EP32, 32 redundant experts (8 + 1 per GPU). */
export const V3_PREFILL: ServeUnit = {
  phase: 'prefill',
  gpus: 32,
  attentionTp: 4,
  redundantSlots: 32,
  sharedAsRouted: false,
  tokensPerGroup: 16384,
  context: 4096,
};
/** V3's decode unit: 40 nodes, attention TP4 (+SP) DP80, EP320: one expert per GPU, 64 GPUs for redundant and shared experts. */
export const V3_DECODE: ServeUnit = {
  phase: 'decode',
  gpus: 320,
  attentionTp: 4,
  redundantSlots: 63,
  sharedAsRouted: true,
  tokensPerGroup: 96,
  context: 4096,
};

export interface ExpertLoadSummary {
  /** Tokens per GPU's experts, mean and busiest GPU. */
  meanTokensPerGpu: number;
  maxTokensPerGpu: number;
  /** Tokens per physical expert (slot): mean and largest. */
  meanTokensPerExpert: number;
  maxTokensPerExpert: number;
}

export interface ServePlan {
  unit: ServeUnit;
  groups: number;
  logicalExperts: number;
  slotsPerGpu: number;
  policy: string;
  withRedundancy: ExpertLoadSummary;
  withoutRedundancy: ExpertLoadSummary;
  /** Latent-KV bytes per token (BF16) and the tokens whose latent KV fits in 90% of a GPU's HBM after its FP8 weights (sequence parallelism spreads tokens over the TP group). */
  kvBytesPerToken: number;
  kvTokensPerGpu: number;
  /** Decode: HBM time to read the GPU's weights and its share of the latent KV; prefill: GEMM time. */
  localSeconds: number;
  /** Dispatch (FP8) + combine (BF16) over IB for one step, all MoE layers, per GPU (bandwidth only, no latency). */
  allToAllSeconds: number;
  /** Decode: HBM-bound (weights + KV reads), prefill: compute-bound; the step takes the larger of that and the all-to-all (two micro-batches overlap them, as V3 does). */
  stepSeconds: number;
  tokensPerSecondPerGpu: number;
}

/** Seeded log-normal expert popularity (σ = 0.6): the skew EPLB is there to absorb (an assumption). */
export function skewedExpertLoads(experts: number, tokens: number, k: number, seed = 11, sigma = 0.6): number[] {
  const z = new Rng(seed).fillNormal(new Float64Array(experts), 0, 1);
  const w = Array.from(z, (v) => Math.exp(sigma * v));
  const total = w.reduce((a, b) => a + b, 0);
  return w.map((v) => (v / total) * tokens * k);
}

function summarize(load: number[], phy2log: number[], logcnt: number[], gpus: number): ExpertLoadSummary {
  const stats = gpuLoads([load], [phy2log], [logcnt], gpus);
  const perSlot = phy2log.map((e) => load[e]! / logcnt[e]!);
  return {
    meanTokensPerGpu: stats.mean[0]!,
    maxTokensPerGpu: stats.max[0]!,
    meanTokensPerExpert: perSlot.reduce((a, b) => a + b, 0) / perSlot.length,
    maxTokensPerExpert: Math.max(...perSlot),
  };
}

export function planServing(c: ModelConfig, cl: ClusterSpec, u: ServeUnit): ServePlan {
  const problems: string[] = [];
  if (u.gpus % u.attentionTp !== 0)
    problems.push(`attention TP ${u.attentionTp} must divide the unit's ${u.gpus} GPUs`);
  if (u.gpus % cl.gpusPerNode !== 0 && u.gpus > cl.gpusPerNode)
    problems.push(`a unit of ${u.gpus} GPUs is not whole nodes of ${cl.gpusPerNode}`);
  const logical = c.nRoutedExperts + (u.sharedAsRouted ? c.nSharedExperts : 0);
  const slots = logical + u.redundantSlots;
  if (slots % u.gpus !== 0) {
    const fix = Math.ceil(slots / u.gpus) * u.gpus - logical;
    problems.push(
      `${logical} experts + ${u.redundantSlots} redundant slots = ${slots} do not split evenly over ${u.gpus} GPUs (nearest: ${fix} redundant slots)`,
    );
  }
  if (problems.length) throw new Error(`impossible serving unit: ${problems.join('; ')}`);
  const groups = u.gpus / u.attentionTp;
  const tokens = groups * u.tokensPerGroup;
  const routedLoad = skewedExpertLoads(c.nRoutedExperts, tokens, c.numExpertsPerTok);
  const load = u.sharedAsRouted ? [...routedLoad, ...new Array<number>(c.nSharedExperts).fill(tokens)] : routedLoad;
  const nodes = Math.max(1, u.gpus / cl.gpusPerNode);
  const hierarchical = !u.sharedAsRouted && c.nGroup % nodes === 0;
  const placed = rebalanceExperts([load], slots, hierarchical ? c.nGroup : 1, hierarchical ? nodes : 1, u.gpus);
  // Without redundancy: every logical expert once, in id order, slots spread evenly (what EP alone does).
  const bare = Math.ceil(logical / u.gpus) * u.gpus;
  const plainLoad = [...load, ...new Array<number>(bare - logical).fill(0)];
  const plain = summarize(
    plainLoad,
    plainLoad.map((_, i) => i),
    plainLoad.map(() => 1),
    u.gpus,
  );

  const kv = kvBytesPerToken(c, 2);
  const split = parameterSplit(c);
  const p = countParameters(c);
  // FP8 weights: attention/dense parts split over the TP group, experts over the unit.
  const weightsPerGpu = split.replicated / u.attentionTp + (split.routed * slots) / logical / u.gpus;
  const free = cl.hbmBytes * 0.9 - weightsPerGpu;
  const kvTokensPerGpu = Math.max(0, free / kv);
  let local: number;
  if (u.phase === 'decode') {
    const kvRead = (u.tokensPerGroup * u.context * kv) / u.attentionTp;
    local = (weightsPerGpu + kvRead) / cl.hbmBandwidth;
  } else {
    const flops = (tokens * 2 * p.activatedMatmul) / u.gpus;
    local = flops / (cl.flops[cl.gemmPrecision] * cl.computeEfficiency);
  }
  // Copies of each token crossing IB: prefill goes the hierarchical way (one per remote node, routing
  // simulated with @dsv3/moe); decode sends point-to-point to every remote expert (V3's low-latency path).
  let moeLayers = 0;
  for (let i = 0; i < c.numHiddenLayers; i++) if (isMoeLayer(c, i)) moeLayers++;
  const copies =
    nodes === 1
      ? 0
      : u.phase === 'prefill' && c.nRoutedExperts % nodes === 0
        ? crossNodeTraffic({ experts: c.nRoutedExperts, topK: c.numExpertsPerTok, nodes, maxNodes: null, tokens: 2048 })
            .remoteCopies
        : (c.numExpertsPerTok + (u.sharedAsRouted ? c.nSharedExperts : 0)) * (1 - 1 / nodes);
  const bytesPerToken = moeLayers * copies * (c.hiddenSize * (1 + 4 / 128) + 2 * c.hiddenSize);
  const allToAllSeconds = ((tokens / u.gpus) * bytesPerToken) / cl.ibBandwidth;
  const stepSeconds = Math.max(local, allToAllSeconds);
  return {
    unit: u,
    groups,
    logicalExperts: logical,
    slotsPerGpu: slots / u.gpus,
    policy: placed.policy,
    withRedundancy: summarize(load, placed.phy2log[0]!, placed.logcnt[0]!, u.gpus),
    withoutRedundancy: plain,
    kvBytesPerToken: kv,
    kvTokensPerGpu,
    localSeconds: local,
    allToAllSeconds,
    stepSeconds,
    tokensPerSecondPerGpu: tokens / u.gpus / stepSeconds,
  };
}
