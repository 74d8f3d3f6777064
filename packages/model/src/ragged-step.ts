// One forward over a ragged batch for serving: several cache sequences, each bringing its own number of
// new tokens (prefill chunks of any length next to one-token decodes). Every token goes through the
// norms, projections, MoE and head together as one [1, T] batch; attention runs per group of segments of
// equal length (all decodes form one group), each over its own sequences' paged latents.
import { add, concat, narrow, releasingStepOutputs, reshape, tensor, type Tensor } from '@dsv3/core';
import type { PagedLatentCache } from '@dsv3/mla';
import { MoE, runMoE } from '@dsv3/moe';
import type { DecoderLayer } from './decoder-layer.js';
import { runLayerScopes } from './layer-scopes.js';
import type { DeepseekV3ForCausalLM } from './model.js';

export interface RaggedSegment {
  /** the cache sequence the tokens extend */
  seq: number;
  /** new tokens, appended after what the sequence already caches */
  tokens: readonly number[];
  /** trailing tokens whose logits to return with logits: 'last' (default 1; speculative verification needs more) */
  logitRows?: number;
}

export interface RaggedStepOptions {
  /** Logit rows to return: 'last' (each segment's last logitRows tokens, default) or 'all' (one per token). */
  logits?: 'last' | 'all';
  /**
   * raggedMtpStep: the token ids i32 [T] already on the model's backend (just sampled there), used in
   * place of the segments' token values (which then only give the segments' lengths).
   */
  ids?: Tensor;
}

export interface RaggedStepOutput {
  /** [Σ logitRows, V] for 'last', [T, V] for 'all' (rows in segment order). */
  logits: Tensor;
  /** Pre-final-norm hidden states of every token [T, D] (what MTP consumes). */
  hidden: Tensor;
  /** Offset of each segment's first token in the T rows. */
  offsets: number[];
}

interface Group {
  /** first row of the group in the flat batch */
  start: number;
  /** tokens per segment */
  n: number;
  seqIds: number[];
}

/** Consecutive segments of equal length run their attention as one [B, n] call. */
function groups(segs: readonly RaggedSegment[]): Group[] {
  const out: Group[] = [];
  let row = 0;
  for (const s of segs) {
    const last = out[out.length - 1];
    if (last && last.n === s.tokens.length) last.seqIds.push(s.seq);
    else out.push({ start: row, n: s.tokens.length, seqIds: [s.seq] });
    row += s.tokens.length;
  }
  return out;
}

function checkSegments(model: DeepseekV3ForCausalLM, segs: readonly RaggedSegment[]): number {
  if (!segs.length) throw new RangeError('raggedStep: no segments');
  const seen = new Set<number>();
  let total = 0;
  for (const [i, s] of segs.entries()) {
    if (seen.has(s.seq)) throw new RangeError(`raggedStep: sequence ${s.seq} appears twice (segment ${i})`);
    seen.add(s.seq);
    if (!s.tokens.length) throw new RangeError(`raggedStep: segment ${i} (sequence ${s.seq}) has no tokens`);
    const rows = s.logitRows ?? 1;
    if (!(Number.isInteger(rows) && rows >= 1 && rows <= s.tokens.length))
      throw new RangeError(`raggedStep: segment ${i} asks for ${rows} logit rows of its ${s.tokens.length} tokens`);
    for (const t of s.tokens) {
      if (!(Number.isInteger(t) && t >= 0 && t < model.config.vocabSize))
        throw new RangeError(
          `raggedStep: token ${t} of segment ${i} is outside the vocabulary [0, ${model.config.vocabSize})`,
        );
    }
    total += s.tokens.length;
  }
  return total;
}

/** Attention of one layer over every group, as [1, T, D]. */
function attend(
  layer: DecoderLayer,
  x: Tensor,
  gs: readonly Group[],
  cache: PagedLatentCache,
  cacheLayer: number,
): Tensor {
  const D = x.shape[2]!;
  const parts: Tensor[] = [];
  for (const g of gs) {
    const B = g.seqIds.length;
    const xs = reshape(narrow(x, 1, g.start, B * g.n), [B, g.n, D]);
    const a = layer.selfAttn.forwardAbsorbed(xs, { cache, layer: cacheLayer, seqIds: g.seqIds });
    parts.push(reshape(a, [1, B * g.n, D]));
  }
  return parts.length === 1 ? parts[0]! : concat(parts, 1);
}

/** h plus the layer's attention, split by groups. */
function groupedAttentionResidual(
  layer: DecoderLayer,
  h: Tensor,
  gs: readonly Group[],
  cache: PagedLatentCache,
  cacheLayer: number,
): Tensor {
  return add(h, attend(layer, layer.inputLayernorm.forward(h), gs, cache, cacheLayer));
}

/** Whether the layer's MoE is expert-parallel (its all-to-alls are awaited). */
const distributed = (layer: DecoderLayer): layer is DecoderLayer & { mlp: MoE } =>
  layer.mlp instanceof MoE && layer.mlp.distributed !== null;

/**
 * A decoder layer with attention split by groups. A local layer runs in a step scope, so its dead
 * kernel outputs go back to the CPU engine's memory when it ends, as in model.step (core's
 * step-outputs.ts); an expert-parallel one awaits its all-to-alls (runMoE), and a scope cannot span an
 * await (its recorder is global), so its outputs are the collector's.
 */
async function layerStep(
  layer: DecoderLayer,
  h: Tensor,
  gs: readonly Group[],
  cache: PagedLatentCache,
  cacheLayer: number,
): Promise<Tensor> {
  if (!distributed(layer))
    return releasingStepOutputs(() => layer.mlpResidual(groupedAttentionResidual(layer, h, gs, cache, cacheLayer)), {
      keep: [layer, cache],
    });
  const h1 = groupedAttentionResidual(layer, h, gs, cache, cacheLayer);
  return add(h1, await runMoE(layer.mlp, layer.postAttentionLayernorm.forward(h1)));
}

function lastRows(x: Tensor, segs: readonly RaggedSegment[], offsets: readonly number[]): Tensor {
  const n = (s: RaggedSegment): number => s.logitRows ?? 1;
  const rows = segs.map((s, i) => narrow(x, 1, offsets[i]! + s.tokens.length - n(s), n(s)));
  return rows.length === 1 ? rows[0]! : concat(rows, 1);
}

function offsetsOf(segs: readonly RaggedSegment[]): number[] {
  let o = 0;
  return segs.map((s) => {
    const at = o;
    o += s.tokens.length;
    return at;
  });
}

/**
 * Cached inference over a ragged batch: appends each segment's tokens to its sequence in every main
 * layer of `cache` and returns logits (last token per segment, or all) and hidden states. Equal to
 * model.step() run on each segment alone.
 */
export async function raggedStep(
  model: DeepseekV3ForCausalLM,
  cache: PagedLatentCache,
  segs: readonly RaggedSegment[],
  opts: RaggedStepOptions = {},
): Promise<RaggedStepOutput> {
  const T = checkSegments(model, segs);
  const ids = tensor(Int32Array.from(segs.flatMap((s) => s.tokens)), {
    shape: [1, T],
    dtype: 'i32',
    backend: model.backend,
  });
  const gs = groups(segs);
  const layers = model.model.layers.items;
  let h: Tensor;
  // All local: the layers' scopes nested as model.step's (a step holds one layer's input at a time).
  if (!layers.some(distributed))
    h = runLayerScopes({
      layers,
      cache,
      input: () => model.model.embedTokens.forward(ids),
      attentionResidual: (layer, i, x) => groupedAttentionResidual(layer, x, gs, cache, i),
      tokens: T,
    });
  else {
    h = model.model.embedTokens.forward(ids);
    for (const [i, layer] of layers.entries()) h = await layerStep(layer, h, gs, cache, i);
  }
  const offsets = offsetsOf(segs);
  const D = model.config.hiddenSize;
  const V = model.config.vocabSize;
  const picked = opts.logits === 'all' ? h : lastRows(h, segs, offsets);
  const logits = model.lmHead.forward(model.model.norm.forward(picked));
  return { logits: reshape(logits, [picked.shape[1]!, V]), hidden: reshape(h, [T, D]), offsets };
}

/**
 * MTP module `depth` over a ragged batch (drafting for several sequences at once): each segment's
 * `tokens` pair with its rows of `hidden` [T, D] (the previous stage's states) and extend the module's
 * own cache layer. Returns logits of every row [T, V] (or the segments' last rows with logits: 'last')
 * and the module's hidden states [T, D].
 */
export async function raggedMtpStep(
  model: DeepseekV3ForCausalLM,
  cache: PagedLatentCache,
  depth: number,
  hidden: Tensor,
  segs: readonly RaggedSegment[],
  opts: RaggedStepOptions = { logits: 'all' },
): Promise<{ logits: Tensor; hidden: Tensor }> {
  const T = checkSegments(model, segs);
  const D = model.config.hiddenSize;
  if (hidden.size !== T * D)
    throw new RangeError(`raggedMtpStep: hidden holds ${hidden.size} values, expected ${T} rows of ${D}`);
  const m = model.mtp.at(depth);
  if (opts.ids && (opts.ids.size !== T || opts.ids.dtype !== 'i32'))
    throw new RangeError(`raggedMtpStep: ids must be i32 [${T}], got ${opts.ids.dtype} [${opts.ids.shape}]`);
  const ids = opts.ids
    ? reshape(opts.ids, [1, T])
    : tensor(Int32Array.from(segs.flatMap((s) => s.tokens)), { shape: [1, T], dtype: 'i32', backend: model.backend });
  const x = m.combine(reshape(hidden, [1, T, D]), ids);
  const h = await layerStep(m.block as DecoderLayer, x, groups(segs), cache, model.config.numHiddenLayers + depth);
  const picked = opts.logits === 'all' ? h : lastRows(h, segs, offsetsOf(segs));
  return { logits: reshape(m.logits(picked), [picked.shape[1]!, model.config.vocabSize]), hidden: reshape(h, [T, D]) };
}
