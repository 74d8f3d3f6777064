// Memory per GPU for training under a layout: parameters, gradients, optimizer state (ZeRO-1 sharded
// or not) and activations of the chunks a schedule keeps in flight.
import { countParameters, isMoeLayer, type ModelConfig } from '@dsv3/model';
import type { TrainLayout, TrainWorkload } from './layout.js';

/** V3's precisions: BF16 weights for compute, FP32 gradients and master weights, BF16 AdamW moments. */
export const BYTES = { weight: 2, grad: 4, master: 4, moments: 4 } as const;

export interface ParameterSplit {
  /** Parameters every data-parallel rank holds (attention, dense MLPs, shared experts, gates, norms, embedding, head). */
  replicated: number;
  /** Routed-expert parameters (sharded by expert parallelism). */
  routed: number;
}

export function parameterSplit(c: ModelConfig): ParameterSplit {
  const p = countParameters(c);
  let moeLayers = 0;
  for (let i = 0; i < c.numHiddenLayers; i++) if (isMoeLayer(c, i)) moeLayers++;
  const routed = moeLayers * c.nRoutedExperts * p.moePerLayer.routedExpert;
  return { replicated: p.total - routed, routed };
}

/**
 * Activation bytes one token leaves for backward in one layer — an estimate in V3's recipe: RMSNorm
 * and the MLA up-projections are recomputed, so attention keeps its norm input (BF16 h), the latent
 * c_Q, c_KV and rope key (BF16), the attention output in FP8 (o_proj's input) and one FP32
 * log-sum-exp per head; the MoE half keeps its norm input (BF16 h) and, per routed and shared
 * expert, the FP8 dispatched input (h) and the FP8 SwiGLU input (2·I; SwiGLU's output is recomputed).
 * Dense layers keep the same for their one wide MLP.
 */
export function activationBytesPerTokenLayer(c: ModelConfig, layer: number): number {
  const h = c.hiddenSize;
  const attn =
    2 * h + 2 * ((c.qLoraRank ?? 0) + c.kvLoraRank + c.qkRopeHeadDim) + c.numHeads * c.vHeadDim + 4 * c.numHeads;
  if (!isMoeLayer(c, layer)) return attn + 2 * h + h + 2 * c.intermediateSize;
  return attn + 2 * h + (c.numExpertsPerTok + c.nSharedExperts) * (h + 2 * c.moeIntermediateSize);
}

export interface MemoryReport {
  /** Parameters held by one GPU (both DualPipe copies counted). */
  parameters: number;
  weights: number;
  gradients: number;
  optimizer: number;
  activations: number;
  total: number;
  /** Chunks in flight at the peak (from the simulated schedule). */
  peakChunks: number;
}

export function trainingMemory(c: ModelConfig, l: TrainLayout, w: TrainWorkload, peakChunks: number): MemoryReport {
  const split = parameterSplit(c);
  const copies = l.schedule === 'dualpipe' ? 2 : 1;
  const replicated = (copies * split.replicated) / l.pp / l.tp;
  const routed = (copies * split.routed) / l.pp / l.ep;
  const parameters = replicated + routed;
  // ZeRO-1: replicated parameters are copies over a stage's dp·ep ranks; routed ones over dp·tp ranks.
  const shardReplicated = l.zero1 ? l.dp * l.ep : 1;
  const shardRouted = l.zero1 ? l.dp * l.tp : 1;
  const optimizer = (BYTES.master + BYTES.moments) * (replicated / shardReplicated + routed / shardRouted);
  const stages = l.schedule === 'dualpipev' ? 2 * l.pp : l.pp;
  let perTokenAllLayers = 0;
  for (let i = 0; i < c.numHiddenLayers; i++) perTokenAllLayers += activationBytesPerTokenLayer(c, i);
  const perChunk = (w.microBatch * w.seqLen * perTokenAllLayers) / stages / l.tp;
  const activations = peakChunks * perChunk;
  const weights = BYTES.weight * parameters;
  const gradients = BYTES.grad * parameters;
  return {
    parameters,
    weights,
    gradients,
    optimizer,
    activations,
    total: weights + gradients + optimizer + activations,
    peakChunks,
  };
}
