// The MLA module: DeepSeek-V2/V3 multi-head latent attention with the Hugging Face parameter names,
// in two forms that compute the same function:
//   forward()          training form: per-head keys/values, core's fused decoupled-RoPE attention
//                      where the backend has it, else materialized for core's causal attention
//                      (differentiable, any backend)
//   forwardAbsorbed()  inference form: W_UK folded into the queries, W_UV into the output, attention
//                      against the normalized latent c_KV and the shared rotated key k_R only, either
//                      over the new tokens themselves or over a PagedLatentCache
import {
  causalAttention,
  concat,
  expand,
  hasFusedKernel,
  isGradEnabled,
  Linear,
  matmul,
  Module,
  narrow,
  permute,
  reshape,
  Rng,
  ropeAttention,
  RMSNorm,
  split,
  type InitOptions,
  Tensor,
} from '@dsv3/core';
import { CacheError, type PagedLatentCache } from './cache.js';
import { validateMlaConfig, type MLAConfig } from './config.js';
import { latentAttention, pagedLatentAttention } from './attention.js';
import type { AttentionImpl } from './attention-attrs.js';
import {
  absorbedCpuApplies,
  absorbedCpuWeights,
  absorbOutputCpu,
  absorbQueryCpu,
  downProjectionsCpu,
  type AbsorbedCpuWeights,
} from './absorbed-cpu.js';
import {
  applyRope,
  checkPositions,
  ropeParams,
  ropeTensors,
  ropeTensorsAt,
  ropeTensorsFrom,
  type RopeParams,
} from './rope.js';

/**
 * minTokens: fewest new tokens of a fresh prompt that forwardAbsorbed computes in the MHA form (measured
 * on V3-mini's shapes: docs/benchmarks.md, issue 13's seventeenth session). Process-wide and read per
 * call; Infinity turns the form off (the model's bench/mha-prefill-ab.ts and the tests set it).
 */
export const mhaPrefillConfig = { minTokens: 128 };

export interface MLAForwardOptions {
  /**
   * Positions of the S tokens: one array of S (every batch row), B arrays of S, or a flat B·S array;
   * or an i32 tensor [S] or [B, S] on x's backend (used on the device as it is, never read back; a
   * position past maxPositionEmbeddings is then reported as an index error when a result is read).
   * Default: startPos, startPos+1, …
   */
  positions?: ArrayLike<number> | readonly ArrayLike<number>[] | Tensor;
  /** first position when `positions` is not given (default 0) */
  startPos?: number;
}

export interface MLAAbsorbedOptions extends MLAForwardOptions {
  /** attend over (and append to) this cache; positions then come from the cached lengths */
  cache?: PagedLatentCache;
  /** the cache layer this module writes and reads (default 0) */
  layer?: number;
  /** one cache sequence per batch row */
  seqIds?: readonly number[];
  /** attention implementation (default 'auto': the registered kernel unless a gradient is needed) */
  impl?: AttentionImpl;
}

export interface MLAOptions extends InitOptions {}

interface Rotation {
  cos: Tensor;
  sin: Tensor;
}

/** A cached forwardAbsorbed call, checked: its cache, layer, one sequence per row and their cached lengths. */
interface CachedCall {
  cache: PagedLatentCache;
  layer: number;
  seqIds: readonly number[];
  starts: number[];
  B: number;
  S: number;
}

interface Projected {
  qNope: Tensor; // [B,S,H,dn]
  qPe: Tensor; // [B,S,H,dr], rotated
  ckv: Tensor; // [B,S,dc], normalized
  kPe: Tensor; // [B,S,dr], rotated
}

export class MLA extends Module {
  readonly config: MLAConfig;
  readonly rope: RopeParams;
  readonly qAProj: Linear | null = null;
  readonly qALayernorm: RMSNorm | null = null;
  readonly qBProj: Linear | null = null;
  readonly qProj: Linear | null = null;
  readonly kvAProjWithMqa: Linear;
  readonly kvALayernorm: RMSNorm;
  readonly kvBProj: Linear;
  readonly oProj: Linear;

  constructor(config: MLAConfig, opts: MLAOptions = {}) {
    super();
    const c = validateMlaConfig(config);
    this.config = c;
    this.rope = ropeParams(c);
    const rng = opts.rng ?? new Rng(opts.seed ?? 0);
    const o = { ...opts, rng };
    const H = c.numHeads;
    const qk = c.qkNopeHeadDim + c.qkRopeHeadDim;
    if (c.qLoraRank !== null) {
      this.qAProj = this.child('q_a_proj', new Linear(c.hiddenSize, c.qLoraRank, o));
      this.qALayernorm = this.child('q_a_layernorm', new RMSNorm(c.qLoraRank, c.rmsNormEps, o));
      this.qBProj = this.child('q_b_proj', new Linear(c.qLoraRank, H * qk, o));
    } else {
      this.qProj = this.child('q_proj', new Linear(c.hiddenSize, H * qk, o));
    }
    this.kvAProjWithMqa = this.child('kv_a_proj_with_mqa', new Linear(c.hiddenSize, c.kvLoraRank + c.qkRopeHeadDim, o));
    this.kvALayernorm = this.child('kv_a_layernorm', new RMSNorm(c.kvLoraRank, c.rmsNormEps, o));
    this.kvBProj = this.child('kv_b_proj', new Linear(c.kvLoraRank, H * (c.qkNopeHeadDim + c.vHeadDim), o));
    this.oProj = this.child('o_proj', new Linear(H * c.vHeadDim, c.hiddenSize, o));
  }

  /** 1/sqrt(qkNope + qkRope), times the YaRN mscale² when it applies. */
  get softmaxScale(): number {
    return this.rope.softmaxScale;
  }

  /** Cached elements per token for this layer: kvLoraRank + qkRopeHeadDim. */
  get cacheElementsPerToken(): number {
    return this.config.kvLoraRank + this.config.qkRopeHeadDim;
  }

  private checkInput(x: Tensor): [number, number] {
    if (x.ndim !== 3 || x.shape[2] !== this.config.hiddenSize) {
      throw new Error(`MLA: input must be [batch, seq, ${this.config.hiddenSize}], got [${x.shape.join(', ')}]`);
    }
    const [B, S] = x.shape as [number, number];
    if (B === 0 || S === 0) throw new Error(`MLA: empty input [${x.shape.join(', ')}]`);
    // The activation dtype is the norms' (a loader may store the projections in bf16 / FP8 for f32 activations).
    const w = this.kvALayernorm.weight.value;
    if (x.dtype !== w.dtype) throw new TypeError(`MLA: input is ${x.dtype} but the weights are ${w.dtype}`);
    if (x.backend !== w.backend)
      throw new Error(`MLA: input is on ${x.backend.name} but the weights are on ${w.backend.name}`);
    return [B, S];
  }

  /** cos/sin of the S tokens' positions [rows, S, d_R/2] (rows 1 or B) on x's backend. */
  private rotation(x: Tensor, opts: MLAForwardOptions): Rotation {
    const [B, S] = x.shape as [number, number];
    const p = opts.positions;
    if (p instanceof Tensor) {
      if (opts.startPos !== undefined) throw new Error('MLA: pass positions or startPos, not both');
      if (p.dtype !== 'i32' || !(p.size === S || p.size === B * S) || p.shape[p.ndim - 1] !== S)
        throw new Error(
          `MLA: a positions tensor must be i32 [${S}] or [${B}, ${S}], got ${p.dtype} [${p.shape.join(', ')}]`,
        );
      if (p.backend !== x.backend)
        throw new Error(`MLA: positions are on ${p.backend.name} but the input on ${x.backend.name}`);
      return ropeTensorsAt(this.rope, p, p.size === S ? 1 : B, x.dtype);
    }
    // from startPos (a prefill's every layer: the same positions), the tensors made for the first layer
    if (p === undefined) return ropeTensorsFrom(this.rope, this.startPosition(S, opts), S, x.dtype, x.backend);
    const { pos, rows } = this.hostPositions(B, S, opts);
    return ropeTensors(this.rope, pos, rows, x.dtype, x.backend);
  }

  /** opts.startPos (default 0), checked: S positions from it fit maxPositionEmbeddings. */
  private startPosition(S: number, opts: MLAForwardOptions): number {
    const start = opts.startPos ?? 0;
    if (!Number.isInteger(start) || start < 0)
      throw new RangeError(`MLA: startPos must be a non-negative integer, got ${start}`);
    if (start + S > this.rope.maxPositions) {
      throw new RangeError(
        `MLA: positions ${start}..${start + S - 1} go beyond maxPositionEmbeddings (${this.rope.maxPositions}); the sequence is too long for this config`,
      );
    }
    return start;
  }

  /** The explicit host positions of opts.positions, checked: [rows * S] with rows 1 or B. */
  private hostPositions(B: number, S: number, opts: MLAForwardOptions): { pos: Int32Array; rows: number } {
    if (opts.startPos !== undefined) throw new Error('MLA: pass positions or startPos, not both');
    const p = opts.positions as ArrayLike<number> | readonly ArrayLike<number>[];
    if (Array.isArray(p) && p.length > 0 && typeof p[0] !== 'number') {
      const list = p as readonly ArrayLike<number>[];
      if (list.length !== B || list.some((r) => r.length !== S))
        throw new Error(`MLA: positions must be ${B} arrays of ${S} (batch x seq)`);
      const pos = new Int32Array(B * S);
      list.forEach((r, b) => {
        for (let s = 0; s < S; s++) pos[b * S + s] = r[s]!;
      });
      checkPositions(
        this.rope,
        list.flatMap((r) => Array.from(r)),
      );
      return { pos, rows: B };
    }
    const flat = p as ArrayLike<number>;
    if (flat.length !== S && flat.length !== B * S)
      throw new Error(`MLA: positions must hold ${S} (seq) or ${B * S} (batch x seq) entries, got ${flat.length}`);
    checkPositions(this.rope, flat);
    return { pos: Int32Array.from(flat), rows: flat.length === S ? 1 : B };
  }

  /** Queries [B,S,H,dn+dr] (rotary part not yet rotated), normalized latent and unrotated shared key of x. */
  private projectUnrotated(x: Tensor): { q: Tensor; ckv: Tensor; kPeRaw: Tensor } {
    const c = this.config;
    const [B, S] = x.shape as [number, number];
    const qDown = this.qAProj ?? this.qProj!;
    const kvA = this.kvAProjWithMqa;
    // The projections of x (queries' down-projection or q_proj, and kv_a's latent and rotary key as two
    // products, so no split copies them apart) as one job on the CPU.
    const cpu = downProjectionsCpu(x, [
      qDown,
      { linear: kvA, start: 0, count: c.kvLoraRank },
      { linear: kvA, start: c.kvLoraRank, count: c.qkRopeHeadDim },
    ]);
    const [qx, ckvRaw, kPeRaw] = (cpu ?? [
      qDown.forward(x),
      ...split(kvA.forward(x), [c.kvLoraRank, c.qkRopeHeadDim], -1),
    ]) as [Tensor, Tensor, Tensor];
    const q0 = this.qProj ? qx : this.qBProj!.forward(this.qALayernorm!.forward(qx));
    const q = reshape(q0, [B, S, c.numHeads, c.qkNopeHeadDim + c.qkRopeHeadDim]);
    return { q, ckv: this.kvALayernorm.forward(ckvRaw), kPeRaw };
  }

  /** Queries, normalized latent and rotated shared key of x at the given positions. */
  private project(x: Tensor, { cos, sin }: Rotation): Projected {
    const c = this.config;
    const [B, S] = x.shape as [number, number];
    const { q, ckv, kPeRaw } = this.projectUnrotated(x);
    const [qNope, qPeRaw] = split(q, [c.qkNopeHeadDim, c.qkRopeHeadDim], -1) as [Tensor, Tensor];
    const il = this.rope.interleave;
    const qPe = applyRope(qPeRaw, cos, sin, il);
    const kPe = reshape(applyRope(reshape(kPeRaw, [B, S, 1, c.qkRopeHeadDim]), cos, sin, il), [B, S, c.qkRopeHeadDim]);
    return { qNope, qPe, ckv, kPe };
  }

  /**
   * The cached quantities of x: normalized latent c_KV [B,S,kvLoraRank] and rotated k_R
   * [B,S,qkRopeHeadDim] (what a PagedLatentCache stores).
   */
  latents(x: Tensor, opts: MLAForwardOptions = {}): { ckv: Tensor; kr: Tensor } {
    this.checkInput(x);
    const p = this.project(x, this.rotation(x, opts));
    return { ckv: p.ckv, kr: p.kPe };
  }

  /**
   * Training form: x [B,S,hidden] → [B,S,hidden]. Keys k = [W_UK c_KV; k_R] and values W_UV c_KV are
   * materialized per head; causal attention among the S tokens. Differentiable.
   */
  forward(x: Tensor, opts: MLAForwardOptions = {}): Tensor {
    const c = this.config;
    const [B, S] = this.checkInput(x);
    const H = c.numHeads;
    const rot = this.rotation(x, opts);
    if (hasFusedKernel('ropeAttention', x)) {
      // One op reads queries, per-head keys/values and the shared rotary key where the projections
      // left them and rotates them itself: no split, concat, expand or rotation passes (nor their backward).
      const { q, ckv, kPeRaw } = this.projectUnrotated(x);
      const kv = reshape(this.kvBProj.forward(ckv), [B, S, H, c.qkNopeHeadDim + c.vHeadDim]);
      const il = this.rope.interleave;
      const o = ropeAttention(q, kv, kPeRaw, rot.cos, rot.sin, { scale: this.softmaxScale, interleave: il });
      return this.oProj.forward(reshape(o, [B, S, H * c.vHeadDim]));
    }
    const { qNope, qPe, ckv, kPe } = this.project(x, rot);
    const kv = reshape(this.kvBProj.forward(ckv), [B, S, H, c.qkNopeHeadDim + c.vHeadDim]);
    const [kNope, v] = split(kv, [c.qkNopeHeadDim, c.vHeadDim], -1) as [Tensor, Tensor];
    const q = concat([qNope, qPe], -1); // [B,S,H,dn+dr]
    // One rotary key shared by every head.
    const kr = expand(reshape(kPe, [B, S, 1, c.qkRopeHeadDim]), [B, S, H, c.qkRopeHeadDim]);
    const k = concat([kNope, kr], -1);
    // Fused where the backend has it: the S x S scores and probabilities are never stored.
    const o = causalAttention(q, k, v, this.softmaxScale); // [B,S,H,dv]
    return this.oProj.forward(reshape(o, [B, S, H * c.vHeadDim]));
  }

  /** Per-head absorbed weights for CPU inference, built from kv_b_proj's current tensor on first use. */
  private absorbedCpu: AbsorbedCpuWeights | null = null;

  /** W_UK [H, nope, kvLoraRank] and W_UV [H, v, kvLoraRank]: kv_b_proj viewed per head. */
  absorbedWeights(): { wUK: Tensor; wUV: Tensor } {
    const c = this.config;
    const w = reshape(this.kvBProj.weight.value, [c.numHeads, c.qkNopeHeadDim + c.vHeadDim, c.kvLoraRank]);
    return { wUK: narrow(w, 1, 0, c.qkNopeHeadDim), wUV: narrow(w, 1, c.qkNopeHeadDim, c.vHeadDim) };
  }

  /**
   * The absorbed products W_UK / W_UV of one forward: inference on the CPU runs them per head against
   * weights laid out once (absorbed-cpu.ts); otherwise kv_b_proj is viewed per head and multiplied.
   */
  /**
   * Lays out the per-head absorbed weights for CPU inference now (a loader calls it, so the first
   * decode step does not pay for the layout and the first touch of its pages); a no-op where the
   * absorbed CPU path does not apply. They are rebuilt on use if kv_b_proj's tensor changes later.
   */
  prepareCpuInference(): void {
    const c = this.config;
    const kvB = this.kvBProj.weight.value;
    if (kvB.backend.name !== 'cpu' || kvB.dtype !== 'f32' || this.kvBProj.forward !== Linear.prototype.forward) return;
    const d = { H: c.numHeads, dn: c.qkNopeHeadDim, dv: c.vHeadDim, dc: c.kvLoraRank };
    this.absorbedCpu = absorbedCpuWeights(kvB, d, this.absorbedCpu);
  }

  /**
   * The absorbed products of one forward, and what to do with the queries once the attention has read
   * them. CPU inference (no gradient) disposes the queries and the attention's output as soon as they
   * are read, so the engine-memory blocks they live in go back at once for the next layer's.
   */
  private absorbed(qNope: Tensor): {
    query: (qNope: Tensor) => Tensor;
    attended: (qLat: Tensor) => void;
    output: (oLat: Tensor) => Tensor;
  } {
    const c = this.config;
    const kvB = this.kvBProj.weight.value;
    if (absorbedCpuApplies(qNope, kvB) && this.kvBProj.forward === Linear.prototype.forward) {
      const d = { H: c.numHeads, dn: c.qkNopeHeadDim, dv: c.vHeadDim, dc: c.kvLoraRank };
      const a = absorbedCpuWeights(kvB, d, this.absorbedCpu);
      this.absorbedCpu = a;
      return {
        query: (q) => absorbQueryCpu(q, a, d),
        attended: (qLat) => qLat.dispose(),
        output: (oLat) => {
          const o = absorbOutputCpu(oLat, a, d);
          oLat.dispose();
          return this.oProj.forward(o);
        },
      };
    }
    const { wUK, wUV } = this.absorbedWeights();
    return { query: (q) => this.absorbQuery(q, wUK), attended: () => {}, output: (o) => this.absorbOutput(o, wUV) };
  }

  /** q' = q_nope · W_UK per head: [B,S,H,dn] → [B,S,H,kvLoraRank]. */
  private absorbQuery(qNope: Tensor, wUK: Tensor): Tensor {
    return permute(matmul(permute(qNope, [0, 2, 1, 3]), wUK), [0, 2, 1, 3]);
  }

  /** (p·c_KV) · W_UVᵀ per head, then o_proj: [B,S,H,kvLoraRank] → [B,S,hidden]. */
  private absorbOutput(oLat: Tensor, wUV: Tensor): Tensor {
    const c = this.config;
    const [B, S] = oLat.shape as [number, number];
    const o = matmul(permute(oLat, [0, 2, 1, 3]), wUV, { transB: true }); // [B,H,S,dv]
    return this.oProj.forward(reshape(permute(o, [0, 2, 1, 3]), [B, S, c.numHeads * c.vHeadDim]));
  }

  /**
   * Absorbed inference form: x [B,S,hidden] → [B,S,hidden], the same function as forward().
   * Without a cache, the S tokens attend causally to each other. With `cache`, each batch row's new
   * tokens are appended to its sequence (`seqIds[b]`, positions continue from the cached lengths, which
   * the host knows) in `layer` and attend over everything cached (chunked prefill for S > 1, decode for
   * S = 1). Every backend, nothing read back: the new latents are scattered into the cache's pages on
   * the device and the attention reads the pages in place. The cache lives on x's backend.
   */
  forwardAbsorbed(x: Tensor, opts: MLAAbsorbedOptions = {}): Tensor {
    if (!opts.cache) return this.absorbedNoCache(x, opts);
    const call = this.cachedCall(x, opts);
    if (this.takesMhaForm(x, call)) return this.freshPromptMha(x, call);
    const { cache, layer, seqIds } = call;
    const p = this.projectAt(x, call);
    cache.appendBatch(layer, seqIds, p.ckv, p.kPe);
    const absorbed = this.absorbed(p.qNope);
    const qLat = absorbed.query(p.qNope);
    const oLat = pagedLatentAttention(qLat, p.qPe, cache, layer, seqIds, {
      scale: this.softmaxScale,
      impl: opts.impl,
    });
    absorbed.attended(qLat);
    return absorbed.output(oLat);
  }

  /**
   * Whether this (checked) cached call is a whole fresh prompt the MHA form computes for less work: every
   * row's sequence is empty in `layer`, S ≥ mhaPrefillConfig.minTokens, no gradient, and the backend has
   * the fused ropeAttention.
   */
  private takesMhaForm(x: Tensor, call: CachedCall): boolean {
    return (
      x.shape[1]! >= mhaPrefillConfig.minTokens &&
      !isGradEnabled() &&
      hasFusedKernel('ropeAttention', x) &&
      call.starts.every((st) => st === 0)
    );
  }

  /**
   * A fresh prompt in the MHA form (DeepSeek's prefill practice; forward()'s fused route): kv_b
   * up-projects the prompt's latents once and each head attends with qk dim nope+rope and v dim v —
   * about 0.43x the absorbed form's multiply-adds at V3-mini's 512 tokens. The latents and rotated keys
   * still go to the cache as the absorbed path writes them, so decode continues from it.
   */
  private freshPromptMha(x: Tensor, { cache, layer, seqIds, B, S }: CachedCall): Tensor {
    const c = this.config;
    const H = c.numHeads;
    const rot = this.rotation(x, {}); // positions 0..S-1 (checked against maxPositionEmbeddings)
    const { q, ckv, kPeRaw } = this.projectUnrotated(x);
    const il = this.rope.interleave;
    const kPe = reshape(applyRope(reshape(kPeRaw, [B, S, 1, c.qkRopeHeadDim]), rot.cos, rot.sin, il), [
      B,
      S,
      c.qkRopeHeadDim,
    ]);
    cache.appendBatch(layer, seqIds, ckv, kPe);
    const kvFlat = this.kvBProj.forward(ckv);
    const kv = reshape(kvFlat, [B, S, H, c.qkNopeHeadDim + c.vHeadDim]);
    const o = ropeAttention(q, kv, kPeRaw, rot.cos, rot.sin, { scale: this.softmaxScale, interleave: il });
    // the per-head keys/values and the attention's output go back at once for the next layer's blocks
    kv.dispose();
    kvFlat.dispose();
    const oFlat = reshape(o, [B, S, H * c.vHeadDim]);
    const out = this.oProj.forward(oFlat);
    oFlat.dispose();
    o.dispose();
    return out;
  }

  private absorbedNoCache(x: Tensor, opts: MLAAbsorbedOptions): Tensor {
    if (opts.seqIds !== undefined || opts.layer !== undefined)
      throw new Error('MLA.forwardAbsorbed: seqIds/layer need a cache');
    this.checkInput(x);
    const p = this.project(x, this.rotation(x, opts));
    const absorbed = this.absorbed(p.qNope);
    const qLat = absorbed.query(p.qNope);
    const oLat = latentAttention(qLat, p.qPe, p.ckv, p.kPe, {
      scale: this.softmaxScale,
      causalOffset: 0,
      impl: opts.impl,
    });
    absorbed.attended(qLat);
    return absorbed.output(oLat);
  }

  /** A cached call's arguments checked: the cache matches this layer, one distinct sequence per row. */
  private cachedCall(x: Tensor, opts: MLAAbsorbedOptions): CachedCall {
    const [B, S] = this.checkInput(x);
    const cache = opts.cache!;
    const c = this.config;
    if (cache.kvLoraRank !== c.kvLoraRank || cache.ropeDim !== c.qkRopeHeadDim) {
      throw new CacheError(
        `MLA: cache/config mismatch: the cache holds kvLoraRank ${cache.kvLoraRank} + ropeDim ${cache.ropeDim}, this layer needs ${c.kvLoraRank} + ${c.qkRopeHeadDim}`,
      );
    }
    const layer = opts.layer ?? 0;
    if (!Number.isInteger(layer) || layer < 0 || layer >= cache.numLayers)
      throw new CacheError(`MLA: layer ${layer} is out of range for a cache of ${cache.numLayers} layers`);
    const seqIds = opts.seqIds;
    if (!seqIds || seqIds.length !== B)
      throw new Error(
        `MLA.forwardAbsorbed: a cache needs seqIds, one per batch row (${B}), got ${seqIds ? seqIds.length : 'none'}`,
      );
    if (new Set(seqIds).size !== seqIds.length) throw new Error('MLA.forwardAbsorbed: seqIds must be distinct');
    if (opts.positions !== undefined || opts.startPos !== undefined)
      throw new Error(
        'MLA.forwardAbsorbed: with a cache, positions continue from the cached lengths; do not pass positions/startPos',
      );
    // a loop, not map(): see PagedLatentCache.appendRows
    const starts: number[] = [];
    for (const q of seqIds) starts.push(cache.length(q, layer));
    return { cache, layer, seqIds, starts, B, S };
  }

  /** x projected at the positions continuing each row's cached length. */
  private projectAt(x: Tensor, { starts, B, S }: CachedCall): Projected {
    const pos = new Int32Array(B * S);
    starts.forEach((st, b) => {
      for (let s = 0; s < S; s++) pos[b * S + s] = st + s;
    });
    checkPositions(this.rope, pos);
    return this.project(x, ropeTensors(this.rope, pos, B, x.dtype, x.backend));
  }
}
