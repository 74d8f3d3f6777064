// A small reference decoder block for tests and benchmarks: RMSNorm → causal multi-head attention with
// rotary positions → residual → RMSNorm → SwiGLU → residual, with an optional per-sequence KV cache.
// Child names follow Hugging Face (input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp).
import {
  add,
  causalMask,
  concat,
  Linear,
  matmul,
  Module,
  mul,
  narrow,
  permute,
  reshape,
  RMSNorm,
  Rng,
  softmax,
  sub,
  SwiGLU,
  tensor,
  type InitOptions,
  type Tensor,
} from '@dsv3/core';
import type { BlockContext, DecoderBlock } from '../block.js';

/** Keys and values of one layer for one sequence batch: [B, heads, T, headDim] each. */
export class KVCache {
  k: Tensor | null = null;
  v: Tensor | null = null;
  get length(): number {
    return this.k?.shape[2] ?? 0;
  }
  /** Appends S positions and returns the whole cache. */
  append(k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    this.k = this.k ? concat([this.k, k], 2) : k;
    this.v = this.v ? concat([this.v, v], 2) : v;
    return { k: this.k, v: this.v! };
  }
  /** Keeps the first `length` positions. */
  truncate(length: number): void {
    if (!(Number.isInteger(length) && length >= 0 && length <= this.length))
      throw new RangeError(`KVCache.truncate(${length}): the cache holds ${this.length} positions`);
    if (length === this.length) return;
    if (length === 0) {
      this.k = this.v = null;
      return;
    }
    this.k = narrow(this.k!, 2, 0, length);
    this.v = narrow(this.v!, 2, 0, length);
  }
}

export interface ReferenceBlockOptions extends InitOptions {
  dim: number;
  heads?: number;
  ffnDim?: number;
  eps?: number;
  ropeTheta?: number;
}

/** cos/sin of pos · θ^(-2i/d) for i < d/2, grown on demand and shared by every call with the same (d, θ). */
class RopeTable {
  private static tables = new Map<string, RopeTable>();
  static of(d: number, theta: number): RopeTable {
    const key = `${d}/${theta}`;
    let t = RopeTable.tables.get(key);
    if (!t) RopeTable.tables.set(key, (t = new RopeTable(d, theta)));
    return t;
  }
  cos = new Float64Array(0);
  sin = new Float64Array(0);
  private constructor(
    readonly d: number,
    readonly theta: number,
  ) {}
  ensure(positions: number): void {
    const half = this.d / 2;
    const have = this.cos.length / half;
    if (positions <= have) return;
    const n = Math.max(positions, 2 * have, 64);
    const cos = new Float64Array(n * half);
    const sin = new Float64Array(n * half);
    cos.set(this.cos);
    sin.set(this.sin);
    for (let p = have; p < n; p++) {
      for (let i = 0; i < half; i++) {
        const a = p * this.theta ** ((-2 * i) / this.d);
        cos[p * half + i] = Math.cos(a);
        sin[p * half + i] = Math.sin(a);
      }
    }
    this.cos = cos;
    this.sin = sin;
  }
}

/** Rotates pairs (x_i, x_{i+half}) of the last axis by angle pos · θ^(-2i/d); positions are [rows · S]. */
function rope(x: Tensor, positions: Float64Array, rows: number, theta: number): Tensor {
  const d = x.shape[x.ndim - 1]!;
  const half = d / 2;
  const s = positions.length / rows;
  const table = RopeTable.of(d, theta);
  let max = 0;
  for (const p of positions) {
    if (!(Number.isInteger(p) && p >= 0)) throw new RangeError(`positions must be non-negative integers, got ${p}`);
    max = Math.max(max, p);
  }
  table.ensure(max + 1);
  const cos = new Float64Array(positions.length * half);
  const sin = new Float64Array(positions.length * half);
  for (let j = 0; j < positions.length; j++) {
    const at = positions[j]! * half;
    cos.set(table.cos.subarray(at, at + half), j * half);
    sin.set(table.sin.subarray(at, at + half), j * half);
  }
  const shape = [rows, 1, s, half];
  const c = tensor(cos, { shape, dtype: x.dtype, backend: x.backend });
  const sn = tensor(sin, { shape, dtype: x.dtype, backend: x.backend });
  const x1 = narrow(x, -1, 0, half);
  const x2 = narrow(x, -1, half, half);
  return concat([sub(mul(x1, c), mul(x2, sn)), add(mul(x1, sn), mul(x2, c))], -1);
}

export class ReferenceAttention extends Module {
  readonly qProj: Linear;
  readonly kProj: Linear;
  readonly vProj: Linear;
  readonly oProj: Linear;
  constructor(
    readonly dim: number,
    readonly heads: number,
    readonly ropeTheta: number,
    opts: InitOptions,
  ) {
    super();
    if (dim % heads !== 0 || (dim / heads) % 2 !== 0)
      throw new RangeError(`ReferenceAttention: dim ${dim} must split into ${heads} heads of even width`);
    this.qProj = this.child('q_proj', new Linear(dim, dim, opts));
    this.kProj = this.child('k_proj', new Linear(dim, dim, opts));
    this.vProj = this.child('v_proj', new Linear(dim, dim, opts));
    this.oProj = this.child('o_proj', new Linear(dim, dim, opts));
  }

  forward(x: Tensor, ctx: BlockContext<KVCache>): Tensor {
    const [b, s] = x.shape as [number, number, number];
    const h = this.heads;
    const hd = this.dim / h;
    const split = (t: Tensor): Tensor => permute(reshape(t, [b, s, h, hd]), [0, 2, 1, 3]);
    let rows = 1;
    let pos: Float64Array;
    if (ctx.positions) {
      pos = Float64Array.from(ctx.positions.dataSync());
      rows = ctx.positions.ndim === 2 ? ctx.positions.shape[0]! : 1;
      if (pos.length !== rows * s)
        throw new Error(`positions [${ctx.positions.shape.join(', ')}] do not cover ${s} positions`);
    } else pos = Float64Array.from({ length: s }, (_, i) => ctx.startPos + i);
    const q = rope(split(this.qProj.forward(x)), pos, rows, this.ropeTheta);
    let k = rope(split(this.kProj.forward(x)), pos, rows, this.ropeTheta);
    let v = split(this.vProj.forward(x));
    if (ctx.cache) ({ k, v } = ctx.cache.append(k, v));
    const t = k.shape[2]!;
    const scores = mul(matmul(q, k, { transB: true }), 1 / Math.sqrt(hd));
    const mask = ctx.mask ?? causalMask(s, t, { dtype: x.dtype, backend: x.backend });
    const o = matmul(softmax(add(scores, mask)), v);
    return this.oProj.forward(reshape(permute(o, [0, 2, 1, 3]), [b, s, this.dim]));
  }
}

/** RMSNorm → attention → residual → RMSNorm → SwiGLU → residual. */
export class ReferenceBlock extends Module implements DecoderBlock<KVCache> {
  readonly inputLayernorm: RMSNorm;
  readonly selfAttn: ReferenceAttention;
  readonly postAttentionLayernorm: RMSNorm;
  readonly mlp: SwiGLU;
  constructor(opts: ReferenceBlockOptions) {
    super();
    const rng = opts.rng ?? new Rng(opts.seed ?? 0);
    const init: InitOptions = {
      dtype: opts.dtype,
      backend: opts.backend,
      rng,
      ...(opts.std !== undefined ? { std: opts.std } : {}),
    };
    const eps = opts.eps ?? 1e-6;
    this.inputLayernorm = this.child(
      'input_layernorm',
      new RMSNorm(opts.dim, eps, { dtype: opts.dtype, backend: opts.backend }),
    );
    this.selfAttn = this.child(
      'self_attn',
      new ReferenceAttention(opts.dim, opts.heads ?? 1, opts.ropeTheta ?? 10000, init),
    );
    this.postAttentionLayernorm = this.child(
      'post_attention_layernorm',
      new RMSNorm(opts.dim, eps, { dtype: opts.dtype, backend: opts.backend }),
    );
    this.mlp = this.child('mlp', new SwiGLU(opts.dim, opts.ffnDim ?? 2 * opts.dim, init));
  }
  forward(h: Tensor, ctx: BlockContext<KVCache> = { startPos: 0 }): Tensor {
    const a = add(h, this.selfAttn.forward(this.inputLayernorm.forward(h), ctx));
    return add(a, this.mlp.forward(this.postAttentionLayernorm.forward(a)));
  }
}

/** A block without attention (RMSNorm → SwiGLU → residual): position-wise, for fully manual loss checks. */
export class PointwiseBlock extends Module implements DecoderBlock {
  readonly postAttentionLayernorm: RMSNorm;
  readonly mlp: SwiGLU;
  constructor(opts: ReferenceBlockOptions) {
    super();
    const rng = opts.rng ?? new Rng(opts.seed ?? 0);
    this.postAttentionLayernorm = this.child(
      'post_attention_layernorm',
      new RMSNorm(opts.dim, opts.eps ?? 1e-6, { dtype: opts.dtype, backend: opts.backend }),
    );
    this.mlp = this.child(
      'mlp',
      new SwiGLU(opts.dim, opts.ffnDim ?? 2 * opts.dim, { dtype: opts.dtype, backend: opts.backend, rng }),
    );
  }
  forward(h: Tensor): Tensor {
    return add(h, this.mlp.forward(this.postAttentionLayernorm.forward(h)));
  }
}
