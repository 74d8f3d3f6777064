// MoEGate: DeepSeek-V3's router as a Module. The scores are Tensors (differentiable); the selection
// runs on the host with exactly the typed-array router's rule (gateRouteFromScores), and the combine
// weights come back as a Tensor whose backward flows into the scores, hence into the gate weight and
// the input. The correction bias is a buffer: it steers the selection only and gets no gradient; it is
// moved by the auxiliary-loss-free updater from the loads the gate records.
import {
  add,
  cast,
  div,
  matmul,
  Module,
  mul,
  record,
  reshape,
  Rng,
  scatterAlong,
  sigmoid,
  softmax,
  sub,
  sum,
  takeAlong,
  tensor,
  full,
  type Backend,
  type DType,
  type InitOptions,
  type Parameter,
  type Tensor,
} from '@dsv3/core';
import { expertLoad, maxVio, MaxVioTracker, updateBias as updateBiasArray } from './balance';
import { resolveGateConfig, validateGateConfig, type HfMoEConfig, type MoEGateConfig } from './config';
import { gateRouteFromScores, type GroupScoreRule } from './routing';

export interface MoEGateOptions extends InitOptions {
  /** dtype of `weight` (default: `dtype`, else f32). Scores are computed in f32 (f64 for an f64 weight). */
  gateDType?: DType;
  /** dtype of the `e_score_correction_bias` buffer (default f32; the published checkpoints store f32). */
  biasDType?: DType;
}

/** What the gate returns for a batch of T tokens. */
export interface GateOutput {
  /** [T, E] scores s = sigmoid (or softmax) of the logits, in f32 (f64 for an f64 gate); differentiable. */
  scores: Tensor;
  /** [T, k] i32 chosen experts (by descending biased score, ties to the lowest index), on the backend. */
  indices: Tensor;
  /** [T, k] combine weights, differentiable w.r.t. the scores (so the gate weight and the input), not the bias. */
  weights: Tensor;
  /** Host copy of `indices`. */
  indicesHost: Int32Array;
  /** Host copy of `weights` (Float32Array, Float64Array for an f64 gate). */
  weightsHost: Float32Array | Float64Array;
  /** [E] (token, slot) pairs routed to each expert in this batch. */
  load: Float64Array;
  /** MaxVio of `load`. */
  maxVio: number;
  numTokens: number;
  k: number;
}

export interface RouteOptions {
  /**
   * Use these experts [T, k] instead of the gate's choice (e.g. replayed routing, tests). The weights are
   * still the gate's: the chosen scores, normalized when normTopkProb, times the scaling factor.
   */
  routeOverride?: ArrayLike<number> | undefined;
}

const f32 = Math.fround;
const BIAS = 'e_score_correction_bias';

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

/**
 * The combine weights as a Tensor: forward values computed on the host (bit-identical to the router),
 * backward into the scores: dL/ds_i = c/S · (g_i − Σ_j g_j s_j / S) for chosen i (c·g_i without
 * normalization), S = Σ_chosen s + 1e-20, 0 for experts not chosen. Built from core ops, so it runs on
 * any backend.
 */
export function routingWeightsTensor(
  scores: Tensor,
  indices: Tensor,
  values: Float32Array | Float64Array,
  normTopkProb: boolean,
  scale: number,
): Tensor {
  const out = tensor(values, { shape: [...indices.shape], dtype: scores.dtype, backend: scores.backend });
  return record(out, 'moeRouteWeights', [scores], (g) => {
    let gs: Tensor;
    if (normTopkProb) {
      const sel = takeAlong(scores.detach(), indices, -1);
      const S = add(sum(sel, -1, true), 1e-20);
      gs = mul(sub(g, div(sum(mul(g, sel), -1, true), S)), div(scale, S));
    } else {
      gs = mul(g, scale);
    }
    return [scatterAlong(full(scores.shape, 0, { dtype: scores.dtype, backend: scores.backend }), indices, gs, -1)];
  });
}

function checkHidden(who: string, x: Tensor, H: number): void {
  if (x.ndim < 1 || x.shape[x.ndim - 1] !== H) {
    throw new Error(
      `${who}: input has hidden size ${x.shape[x.ndim - 1] ?? 'none'} (shape [${x.shape.join(', ')}]), expected hidden_size ${H}`,
    );
  }
  if (!['f32', 'f64', 'f16', 'bf16'].includes(x.dtype))
    throw new TypeError(`${who}: input must be a float tensor, got ${x.dtype}`);
}

export class MoEGate extends Module {
  readonly config: MoEGateConfig;
  /** [E, H] router weight (checkpoint name `weight`). */
  readonly weight: Parameter;
  /** Whether the gate has the `e_score_correction_bias` buffer. */
  readonly hasBias: boolean;
  /** Group score rule in effect. */
  readonly groupScore: GroupScoreRule;
  /** Running load statistics of the batches routed in training mode (MaxVio_batch, MaxVio_global). */
  readonly loadTracker: MaxVioTracker;
  /** Loads accumulated (training mode) since the last updateBias(); what updateBias() uses by default. */
  readonly pendingLoad: Float64Array;
  /** Load of the last routed batch (any mode). */
  lastLoad: Float64Array | null = null;
  private biasCache: { t: Tensor; host: Float32Array } | null = null;

  constructor(config: MoEGateConfig | HfMoEConfig, opts: MoEGateOptions = {}) {
    super();
    const cfg = resolveGateConfig(config);
    validateGateConfig(cfg);
    this.config = { ...cfg };
    const E = cfg.nRoutedExperts;
    const H = cfg.hiddenSize;
    this.hasBias = cfg.useCorrectionBias ?? true;
    this.groupScore = cfg.groupScore ?? (this.hasBias ? 'top2sum' : 'max');
    const dtype = opts.gateDType ?? opts.dtype ?? 'f32';
    const rng = opts.rng ?? new Rng(opts.seed ?? 0);
    const std = opts.std ?? 1 / Math.sqrt(H);
    const w = rng.fillNormal(new Float64Array(E * H), 0, std);
    this.weight = this.param('weight', tensor(w, { shape: [E, H], dtype, backend: opts.backend }));
    if (this.hasBias) this.buffer(BIAS, full([E], 0, { dtype: opts.biasDType ?? 'f32', backend: opts.backend }));
    this.loadTracker = new MaxVioTracker(E);
    this.pendingLoad = new Float64Array(E);
  }

  get numExperts(): number {
    return this.config.nRoutedExperts;
  }
  get k(): number {
    return this.config.numExpertsPerTok;
  }
  /** The dtype the logits and scores are computed in: f64 for an f64 weight, f32 otherwise. */
  get computeDType(): DType {
    return this.weight.value.dtype === 'f64' ? 'f64' : 'f32';
  }

  /** The correction bias buffer (null when the gate has none). */
  get bias(): Tensor | null {
    return this.hasBias ? this.getBuffer(BIAS) : null;
  }

  /** Replaces the correction bias values (kept in the buffer's dtype, on the gate's backend). */
  setBias(values: ArrayLike<number>): void {
    if (!this.hasBias)
      throw new Error('MoEGate: this gate has no e_score_correction_bias (topk_method is not noaux_tc)');
    const cur = this.getBuffer(BIAS);
    if (values.length !== this.numExperts)
      throw new Error(`MoEGate.setBias: ${values.length} values for ${this.numExperts} experts`);
    const host = Float32Array.from(values);
    const t = tensor(host, { shape: [this.numExperts], dtype: 'f32', backend: cur.backend });
    const next = cur.dtype === 'f32' ? t : cast(t, cur.dtype);
    this.setBuffer(BIAS, next);
    this.biasCache = cur.dtype === 'f32' ? { t: next, host } : null;
  }

  /** Gate logits u·e_i [T, E] from x [..., H] (flattened to tokens), in the compute dtype. */
  logits(x: Tensor): Tensor {
    checkHidden('MoEGate', x, this.config.hiddenSize);
    const ct = this.computeDType;
    const x2 = reshape(x, [-1, this.config.hiddenSize]);
    return matmul(cast(x2, ct), cast(this.weight.value, ct), { transB: true });
  }

  /** Scores s [T, E]: sigmoid (V3) or softmax of the logits, differentiable. */
  scores(x: Tensor): Tensor {
    const l = this.logits(x);
    return this.config.scoringFunc === 'sigmoid' ? sigmoid(l) : softmax(l, -1);
  }

  /** The bias as a host Float32Array (cached per buffer tensor); null without a bias. */
  biasHostSync(): Float32Array | undefined {
    const b = this.bias;
    if (!b) return undefined;
    if (this.biasCache?.t === b) return this.biasCache.host;
    if (!b.backend.readSync) {
      throw new Error(
        `MoEGate: the ${b.backend.name} backend cannot read the correction bias synchronously; use the async forward`,
      );
    }
    const host = Float32Array.from(b.dataSync());
    this.biasCache = { t: b, host };
    return host;
  }

  async biasHostAsync(): Promise<Float32Array | undefined> {
    const b = this.bias;
    if (!b) return undefined;
    if (this.biasCache?.t === b) return this.biasCache.host;
    const host = Float32Array.from(await b.data());
    this.biasCache = { t: b, host };
    return host;
  }

  /** Routes x [..., H] (flattened to T tokens); needs a backend with synchronous readback (the CPU). */
  forward(x: Tensor, opts: RouteOptions = {}): GateOutput {
    if (!x.backend.readSync) {
      throw new Error(
        `MoEGate.forward: the ${x.backend.name} backend cannot read the scores back synchronously to route; use await gate.forwardAsync(x)`,
      );
    }
    const scores = this.scores(x);
    return this.route(scores, scores.dataSync() as Float32Array | Float64Array, this.biasHostSync(), opts);
  }

  /** Routes x [..., H]; works on every backend (awaits the scores). */
  async forwardAsync(x: Tensor, opts: RouteOptions = {}): Promise<GateOutput> {
    const scores = this.scores(x);
    const host = (await scores.data()) as Float32Array | Float64Array;
    return this.route(scores, host, await this.biasHostAsync(), opts);
  }

  /**
   * Selection and weights from the scores (Tensor + its host values). Selection is
   * gateRouteFromScores on the float32 scores with this gate's bias; records the load in training mode.
   */
  route(
    scores: Tensor,
    scoresHost: Float32Array | Float64Array,
    biasHost: Float32Array | undefined,
    opts: RouteOptions = {},
  ): GateOutput {
    const cfg = this.config;
    const E = cfg.nRoutedExperts;
    const k = cfg.numExpertsPerTok;
    const T = scoresHost.length / E;
    let indicesHost: Int32Array;
    let weightsHost: Float32Array | Float64Array;
    if (opts.routeOverride !== undefined) {
      const o = opts.routeOverride;
      if (o.length !== T * k)
        throw new Error(`MoEGate: routeOverride has ${o.length} entries, expected T*k = ${T}*${k}`);
      indicesHost = Int32Array.from(o);
      for (let i = 0; i < indicesHost.length; i++) {
        const e = indicesHost[i]!;
        if (!(e >= 0 && e < E) || e !== o[i])
          throw new Error(
            `MoEGate: routeOverride entry ${i} (token ${Math.floor(i / k)}) = ${o[i]} is not an expert index in [0, ${E})`,
          );
      }
      for (let i = 0; i < scoresHost.length; i++) {
        if (Number.isNaN(scoresHost[i]))
          throw new Error(`gate scores of token ${Math.floor(i / E)} contain NaN (expert ${i % E})`);
      }
      weightsHost = routeWeightsFromScores(scoresHost, E, indicesHost, k, cfg.normTopkProb, cfg.routedScalingFactor);
    } else {
      const s32 = scoresHost instanceof Float32Array ? scoresHost : Float32Array.from(scoresHost);
      const r = gateRouteFromScores(s32, {
        nRoutedExperts: E,
        numExpertsPerTok: k,
        nGroup: cfg.nGroup,
        topkGroup: cfg.topkGroup,
        normTopkProb: cfg.normTopkProb,
        routedScalingFactor: cfg.routedScalingFactor,
        scoringFunc: cfg.scoringFunc,
        bias: biasHost,
        groupScore: this.groupScore,
      });
      indicesHost = r.indices;
      weightsHost =
        scoresHost instanceof Float32Array
          ? r.weights
          : routeWeightsFromScores(scoresHost, E, indicesHost, k, cfg.normTopkProb, cfg.routedScalingFactor);
    }
    const indices = tensor(indicesHost, { shape: [T, k], dtype: 'i32', backend: scores.backend });
    const weights = routingWeightsTensor(scores, indices, weightsHost, cfg.normTopkProb, cfg.routedScalingFactor);
    const load = expertLoad(indicesHost, E);
    this.lastLoad = load;
    if (this.training && T > 0) {
      this.loadTracker.update(load);
      for (let e = 0; e < E; e++) this.pendingLoad[e]! += load[e]!;
    }
    return { scores, indices, weights, indicesHost, weightsHost, load, maxVio: maxVio(load), numTokens: T, k };
  }

  /** MaxVio of the last batch recorded in training mode (NaN before any). */
  get maxVioBatch(): number {
    return this.loadTracker.batch;
  }
  /** MaxVio of all loads recorded since creation or resetLoadStats(). */
  get maxVioGlobal(): number {
    return this.loadTracker.global;
  }
  resetLoadStats(): void {
    this.loadTracker.reset();
    this.pendingLoad.fill(0);
    this.lastLoad = null;
  }

  /**
   * Auxiliary-loss-free update: b_i += gamma · sign(mean load − load_i) over `loads` (default: the loads
   * recorded in training mode since the last update, which are then cleared). V3: gamma = 0.001.
   * Returns the new bias. Needs the bias on the host: synchronous backends, or after a forward (cached).
   */
  updateBias(loads?: ArrayLike<number>, gamma = 0.001): Float32Array {
    return this.applyBiasUpdate(this.biasHostSync(), loads, gamma);
  }

  async updateBiasAsync(loads?: ArrayLike<number>, gamma = 0.001): Promise<Float32Array> {
    return this.applyBiasUpdate(await this.biasHostAsync(), loads, gamma);
  }

  private applyBiasUpdate(
    bias: Float32Array | undefined,
    loads: ArrayLike<number> | undefined,
    gamma: number,
  ): Float32Array {
    if (!bias)
      throw new Error('MoEGate.updateBias: this gate has no e_score_correction_bias (topk_method is not noaux_tc)');
    const use = loads ?? this.pendingLoad;
    if (use.length !== this.numExperts)
      throw new Error(`MoEGate.updateBias: ${use.length} loads for ${this.numExperts} experts`);
    const next = updateBiasArray(bias, use, gamma);
    this.setBias(next);
    if (loads === undefined) this.pendingLoad.fill(0);
    return next;
  }

  /** The backend the gate's parameters live on. */
  get backend(): Backend {
    return this.weight.value.backend;
  }
}
