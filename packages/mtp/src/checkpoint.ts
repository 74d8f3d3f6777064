// MTP state-dict names ↔ the published checkpoint layout. DeepSeek-V3 stores MTP module d (0-based) as
// decoder layer `num_hidden_layers + d`:
//   model.layers.{L+d}.enorm.weight, .hnorm.weight, .eh_proj.weight, .shared_head.norm.weight,
//   .shared_head.head.weight, .embed_tokens.weight, and the block's own tensors (input_layernorm,
//   self_attn.*, post_attention_layernorm, mlp.*) directly under the layer prefix.
// A MultiTokenPredictor names them layers.{d}.enorm.weight, layers.{d}.block.self_attn..., etc.
import type { Tensor } from '@dsv3/core';

export interface MTPCheckpointOptions {
  /** The main model's number of decoder layers (61 in V3); MTP module d is checkpoint layer L + d. */
  numHiddenLayers: number;
  /** Prefix of decoder layers in the checkpoint (default 'model.layers.'). */
  layerPrefix?: string;
  /**
   * 'share' (default): the module uses the main model's embedding and head. Loading skips the
   * checkpoint's `embed_tokens` / `shared_head.head` copies; saving writes them from `shared`.
   * 'load': the module owns copies (built with ownEmbedding / ownHead) loaded from and saved to those names.
   */
  headAndEmbedding?: 'share' | 'load';
  /** Local names carry this prefix (default 'layers.', as in MultiTokenPredictor; '' with depth for one MTPModule). */
  localPrefix?: string;
}

/** Checkpoint tensors of an MTP layer that hold copies of the main model's weights. */
export const SHARED_COPY_NAMES = ['embed_tokens.weight', 'shared_head.head.weight'] as const;

const BLOCK = 'block.';

function layerPrefix(o: MTPCheckpointOptions): string {
  if (!(Number.isInteger(o.numHiddenLayers) && o.numHiddenLayers >= 0))
    throw new RangeError(`numHiddenLayers must be a non-negative integer, got ${o.numHiddenLayers}`);
  return o.layerPrefix ?? 'model.layers.';
}

/**
 * Local name → checkpoint name. `local` is a MultiTokenPredictor name (`layers.{d}.…`), or with
 * `depth` given and `localPrefix: ''` an MTPModule name (`enorm.weight`, `block.mlp.…`).
 */
export function mtpToCheckpointName(local: string, opts: MTPCheckpointOptions & { depth?: number }): string {
  const lp = layerPrefix(opts);
  let d: number;
  let rest: string;
  if (opts.depth !== undefined) {
    d = opts.depth;
    rest = local.startsWith(opts.localPrefix ?? '') ? local.slice((opts.localPrefix ?? '').length) : local;
  } else {
    const pre = opts.localPrefix ?? 'layers.';
    const m = local.startsWith(pre) ? /^(\d+)\.(.+)$/.exec(local.slice(pre.length)) : null;
    if (!m) throw new Error(`not an MTP state-dict name: ${local} (expected ${pre}{depth}.…)`);
    d = Number(m[1]);
    rest = m[2]!;
  }
  if (rest.startsWith(BLOCK)) rest = rest.slice(BLOCK.length);
  return `${lp}${opts.numHiddenLayers + d}.${rest}`;
}

/**
 * Checkpoint name → { depth, local name } (local as MultiTokenPredictor names it, or relative to one
 * MTPModule as `moduleName`), or null when the name is not an MTP layer's.
 */
export function mtpFromCheckpointName(
  name: string,
  opts: MTPCheckpointOptions & { depth?: number },
): { depth: number; local: string; moduleName: string } | null {
  const lp = layerPrefix(opts);
  if (!name.startsWith(lp)) return null;
  const m = /^(\d+)\.(.+)$/.exec(name.slice(lp.length));
  if (!m) return null;
  const d = Number(m[1]) - opts.numHiddenLayers;
  if (d < 0 || (opts.depth !== undefined && d !== opts.depth)) return null;
  const rest = m[2]!;
  const own = /^(enorm|hnorm|eh_proj|shared_head|embed_tokens)\./.test(rest);
  const moduleName = own ? rest : BLOCK + rest;
  return { depth: d, local: `${opts.localPrefix ?? 'layers.'}${d}.${moduleName}`, moduleName };
}

export interface MTPLoadResult {
  /** Tensors under local names, ready for loadStateDict. */
  state: Record<string, Tensor>;
  /** Checkpoint names of MTP layers that were not taken (shared copies in 'share' mode). */
  skipped: string[];
}

/**
 * Picks the MTP layers' tensors out of a checkpoint and renames them for a MultiTokenPredictor (the
 * first `depths` modules when given), or for one MTPModule with `only: d` (MTPModule-relative names).
 */
export function mtpStateDictFromCheckpoint(
  ckpt: Record<string, Tensor>,
  opts: MTPCheckpointOptions & { depths?: number; only?: number },
): MTPLoadResult {
  const mode = opts.headAndEmbedding ?? 'share';
  const state: Record<string, Tensor> = {};
  const skipped: string[] = [];
  for (const [name, t] of Object.entries(ckpt)) {
    const r = mtpFromCheckpointName(name, {
      numHiddenLayers: opts.numHiddenLayers,
      layerPrefix: opts.layerPrefix,
      localPrefix: opts.localPrefix,
      depth: opts.only,
    });
    if (!r) continue;
    if (opts.depths !== undefined && r.depth >= opts.depths) continue;
    if (mode === 'share' && (SHARED_COPY_NAMES as readonly string[]).includes(r.moduleName)) {
      skipped.push(name);
      continue;
    }
    state[opts.only !== undefined ? r.moduleName : r.local] = t;
  }
  return { state, skipped };
}

/**
 * A MultiTokenPredictor state dict (names layers.{d}.…) under checkpoint names. In 'share' mode,
 * `shared` supplies the main model's embedding and head weights, written as each layer's copies
 * (as the published checkpoints have them); without it the copies are left out.
 */
export function mtpStateDictToCheckpoint(
  state: Record<string, Tensor>,
  opts: MTPCheckpointOptions & { shared?: { embedding: Tensor; head: Tensor } },
): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  const depths = new Set<number>();
  for (const [local, t] of Object.entries(state)) {
    const name = mtpToCheckpointName(local, opts);
    out[name] = t;
    const r = mtpFromCheckpointName(name, opts);
    if (r) depths.add(r.depth);
  }
  if ((opts.headAndEmbedding ?? 'share') === 'share' && opts.shared) {
    const lp = layerPrefix(opts);
    for (const d of depths) {
      out[`${lp}${opts.numHiddenLayers + d}.embed_tokens.weight`] ??= opts.shared.embedding;
      out[`${lp}${opts.numHiddenLayers + d}.shared_head.head.weight`] ??= opts.shared.head;
    }
  }
  return out;
}
