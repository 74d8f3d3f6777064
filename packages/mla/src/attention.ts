// Absorbed-MLA attention: which kernel runs, and the composed path. Queries are in latent space: q' = q_nope·W_UK [.., H, d_c] and the
// rotated q_R [.., H, d_R]; every head attends to the same keys (the cached c_KV and k_R rows) and
// the value is c_KV itself, so one latent row serves all heads.
//
// Two ops are registered (register.ts) for 'cpu' (attention-cpu.ts) and 'webgpu' (webgpu.ts):
//   'mla.flashPrefill'    contiguous latents, causal, tiled with an online softmax (no S x T scores)
//   'mla.pagedAttention'  latents in a PagedLatentCache pool, read through block tables; decode is
//                         S = 1 (each latent row is read once for all heads), chunked prefill S > 1
// Both accumulate in float64 and are inference-only (no autograd). On backends without the kernels,
// or when a gradient is needed, the same math runs composed from core ops (differentiable).
import {
  add,
  cast,
  causalMask,
  exec1,
  hasKernel,
  indexSelect,
  isGradEnabled,
  matmul,
  mul,
  reshape,
  softmax,
  tensor,
  type Tensor,
} from '@dsv3/core';
import type { PagedLatentCache } from './cache.js';
import './register.js';
import {
  FLASH_PREFILL_OP,
  PAGED_ATTENTION_OP,
  type AttentionImpl,
  type FlashPrefillAttrs,
  type PagedAttentionAttrs,
} from './attention-attrs.js';

// ---------------------------------------------------------------------------------------------
// Composed path (any backend, differentiable)

/**
 * Latent attention from core ops: every head shares the keys, so the S·H query rows of a batch
 * element form one matrix against ckv/kr (no per-head copies). `mask` is additive and broadcasts to
 * [B, S, H, T] (e.g. [S, 1, T] or [B, S, 1, T]).
 */
export function composedLatentAttention(
  qLat: Tensor,
  qRope: Tensor,
  ckv: Tensor,
  kr: Tensor,
  scale: number,
  mask: Tensor,
): Tensor {
  const [B, S, H, C] = qLat.shape as [number, number, number, number];
  const R = qRope.shape[3]!;
  const T = ckv.shape[1]!;
  const q1 = reshape(qLat, [B, S * H, C]);
  const q2 = reshape(qRope, [B, S * H, R]);
  const scores = add(matmul(q1, ckv, { transB: true }), matmul(q2, kr, { transB: true })); // [B, S·H, T]
  const p = softmax(add(mul(reshape(scores, [B, S, H, T]), scale), mask), -1); // f32 or wider inside the kernels
  return reshape(matmul(reshape(p, [B, S * H, T]), ckv), [B, S, H, C]);
}

function checkDims(what: string, qLat: Tensor, qRope: Tensor): [number, number, number, number, number] {
  if (qLat.ndim !== 4) throw new Error(`${what}: qLat must be [B, S, H, kvLoraRank], got [${qLat.shape.join(', ')}]`);
  const [B, S, H, C] = qLat.shape as [number, number, number, number];
  if (qRope.ndim !== 4 || qRope.shape[0] !== B || qRope.shape[1] !== S || qRope.shape[2] !== H) {
    throw new Error(`${what}: qRope must be [${B}, ${S}, ${H}, ropeDim], got [${qRope.shape.join(', ')}]`);
  }
  if (qLat.dtype !== qRope.dtype) throw new TypeError(`${what}: qLat is ${qLat.dtype} but qRope is ${qRope.dtype}`);
  if (qLat.dtype !== 'f32' && qLat.dtype !== 'f64')
    throw new TypeError(`${what}: queries must be f32 or f64, got ${qLat.dtype}`);
  return [B, S, H, C, qRope.shape[3]!];
}

const needsGrad = (...ts: Tensor[]): boolean => isGradEnabled() && ts.some((t) => t.requiresGrad);

export interface LatentAttentionOptions {
  /** softmax scale (MLA.softmaxScale) */
  scale: number;
  /** query s sees keys j <= causalOffset + s; default T - S (the queries are the last S keys) */
  causalOffset?: number;
  /** 'auto' (default): the registered kernel when no gradient is needed, else composed */
  impl?: AttentionImpl;
}

/**
 * Causal attention of latent queries against contiguous latents: qLat [B,S,H,C], qRope [B,S,H,R],
 * ckv [B,T,C], kr [B,T,R] → [B,S,H,C] = softmax((qLat·ckvᵀ + qRope·krᵀ)·scale + causal) · ckv.
 */
export function latentAttention(
  qLat: Tensor,
  qRope: Tensor,
  ckv: Tensor,
  kr: Tensor,
  opts: LatentAttentionOptions,
): Tensor {
  const [B, S, , C, R] = checkDims('latentAttention', qLat, qRope);
  if (ckv.ndim !== 3 || ckv.shape[0] !== B || ckv.shape[2] !== C)
    throw new Error(`latentAttention: ckv must be [${B}, T, ${C}], got [${ckv.shape.join(', ')}]`);
  const T = ckv.shape[1]!;
  if (kr.ndim !== 3 || kr.shape[0] !== B || kr.shape[1] !== T || kr.shape[2] !== R)
    throw new Error(`latentAttention: kr must be [${B}, ${T}, ${R}], got [${kr.shape.join(', ')}]`);
  if (ckv.dtype !== qLat.dtype || kr.dtype !== qLat.dtype)
    throw new TypeError(`latentAttention: dtypes differ (queries ${qLat.dtype}, ckv ${ckv.dtype}, kr ${kr.dtype})`);
  const offset = opts.causalOffset ?? T - S;
  if (!Number.isInteger(offset) || offset < 0)
    throw new RangeError(
      `latentAttention: causalOffset must be a non-negative integer (every query must see key 0), got ${offset}`,
    );
  if (T === 0) throw new RangeError('latentAttention: no keys');
  const be = qLat.backend;
  const impl = opts.impl ?? 'auto';
  const useKernel =
    impl === 'kernel' ||
    (impl === 'auto' &&
      hasKernel(FLASH_PREFILL_OP, be.name) &&
      (be.name === 'cpu' || qLat.dtype === 'f32') &&
      !needsGrad(qLat, qRope, ckv, kr));
  if (useKernel) {
    return exec1(FLASH_PREFILL_OP, [qLat, qRope, ckv, kr], {
      scale: opts.scale,
      causalOffset: offset,
    } satisfies FlashPrefillAttrs);
  }
  const mask = reshape(causalMask(S, T, { offset, dtype: qLat.dtype, backend: be }), [S, 1, T]);
  return composedLatentAttention(qLat, qRope, ckv, kr, opts.scale, mask);
}

export interface PagedAttentionOptions {
  scale: number;
  impl?: AttentionImpl;
}

/**
 * Attention of the last S tokens of each sequence over its cached latents: qLat [N,S,H,C],
 * qRope [N,S,H,R] for the sequences `seqIds` (whose latents, including these S tokens, are already
 * in `cache` at `layer`) → [N,S,H,C]. Sequences may have different lengths.
 */
export function pagedLatentAttention(
  qLat: Tensor,
  qRope: Tensor,
  cache: PagedLatentCache,
  layer: number,
  seqIds: readonly number[],
  opts: PagedAttentionOptions,
): Tensor {
  const [N, S, , C, R] = checkDims('pagedLatentAttention', qLat, qRope);
  if (C !== cache.kvLoraRank || R !== cache.ropeDim) {
    throw new Error(
      `pagedLatentAttention: queries are ${C} + ${R} wide but the cache holds kvLoraRank ${cache.kvLoraRank} + ropeDim ${cache.ropeDim}`,
    );
  }
  if (seqIds.length !== N) throw new Error(`pagedLatentAttention: ${N} query rows but ${seqIds.length} sequence ids`);
  const { tables, lengths, maxBlocks } = cache.batchTables(layer, seqIds);
  lengths.forEach((len, i) => {
    if (len < S)
      throw new RangeError(
        `pagedLatentAttention: sequence ${seqIds[i]} holds ${len} tokens in layer ${layer}, fewer than the ${S} queries (append the new tokens' latents first)`,
      );
  });
  const be = qLat.backend;
  if (be !== cache.backend)
    throw new Error(
      `pagedLatentAttention: the queries are on ${be.name} but the cache's pages on ${cache.backend.name}; make the cache on the model's backend`,
    );
  const impl = opts.impl ?? 'auto';
  const useKernel =
    impl === 'kernel' ||
    (impl === 'auto' &&
      hasKernel(PAGED_ATTENTION_OP, be.name) &&
      (be.name === 'cpu' || (qLat.dtype === 'f32' && cache.dtype === 'f32')) &&
      !needsGrad(qLat, qRope));
  const pool = cache.poolTensors(layer);
  if (useKernel) {
    const tab = tensor(tables, { shape: [N, maxBlocks], dtype: 'i32', backend: be });
    const len = tensor(lengths, { shape: [N], dtype: 'i32', backend: be });
    // on the CPU the pool may be another float type than the queries: the kernel reads numbers either way
    return exec1(PAGED_ATTENTION_OP, [qLat, qRope, pool.ckv, pool.kr, tab, len], {
      scale: opts.scale,
      blockSize: cache.blockSize,
    } satisfies PagedAttentionAttrs);
  }
  // composed: gather each sequence's latent rows from the pages on the device, padded to the longest
  // (padding reads row 0 and is masked)
  const Tmax = Math.max(...lengths);
  const bs = cache.blockSize;
  const rows = new Int32Array(N * Tmax);
  const mask = new Float64Array(N * S * Tmax);
  for (let n = 0; n < N; n++) {
    const T = lengths[n]!;
    for (let j = 0; j < T; j++) rows[n * Tmax + j] = tables[n * maxBlocks + Math.floor(j / bs)]! * bs + (j % bs);
    for (let s = 0; s < S; s++)
      for (let j = 0; j < Tmax; j++) mask[(n * S + s) * Tmax + j] = j < T && j <= T - S + s ? 0 : -Infinity;
  }
  const dtype = qLat.dtype;
  const idx = tensor(rows, { shape: [N * Tmax], dtype: 'i32', backend: be });
  const gather = (p: Tensor, w: number): Tensor => {
    const g = reshape(indexSelect(reshape(p, [p.size / w, w]), idx, 0), [N, Tmax, w]);
    return g.dtype === dtype ? g : cast(g, dtype);
  };
  return composedLatentAttention(
    qLat,
    qRope,
    gather(pool.ckv, C),
    gather(pool.kr, R),
    opts.scale,
    tensor(mask, { shape: [N, S, 1, Tmax], dtype, backend: be }),
  );
}
