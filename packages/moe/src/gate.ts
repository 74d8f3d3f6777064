// MoEGate: DeepSeek-V3's router as a Module. Everything stays on the gate's backend: the scores
// (differentiable), the selection (a routing kernel with exactly the typed-array router's rule,
// gateRouteFromScores, ties included), the combine weights (a Tensor whose backward flows into the
// scores, hence into the gate weight and the input), the dispatch (per-expert counts, offsets, the
// stable order) and the expert loads. The correction bias is a buffer: it steers the selection only
// and gets no gradient; the auxiliary-loss-free update moves it from the loads, on the device.
// Code that needs host numbers (logged loads, all-to-all split sizes) awaits `t.data()` itself.
import {
  add,
  cast,
  div,
  exec1,
  full,
  hasKernel,
  matmul,
  mean,
  Module,
  mul,
  record,
  reshape,
  Rng,
  scatterAlong,
  sigmoid,
  sign,
  softmax,
  sub,
  sum,
  takeAlong,
  tensor,
  type Backend,
  type DType,
  type InitOptions,
  type Parameter,
  type Tensor,
} from '@dsv3/core';
import { MaxVioTracker } from './balance';
import './register';
import { resolveGateConfig, validateGateConfig, type HfMoEConfig, type MoEGateConfig } from './config';
import { dispatchTensors, routeTensors, type DeviceDispatch } from './device-route';
import type { GroupScoreRule } from './routing';
import { ROUTE_WEIGHTS_BACKWARD_OP } from './route-weights-backward';

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
  /** The pairs sorted by expert: offsets, counts, gather rows, permutation (i32 tensors). */
  plan: DeviceDispatch;
  /** f32 [E]: (token, slot) pairs routed to each expert in this batch. */
  load: Tensor;
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

const BIAS = 'e_score_correction_bias';

/**
 * The combine weights as a Tensor: forward values from the routing kernel (bit-identical to the host
 * router on the CPU),
 * backward into the scores: dL/ds_i = c/S · (g_i − Σ_j g_j s_j / S) for chosen i (c·g_i without
 * normalization), S = Σ_chosen s + 1e-20, 0 for experts not chosen. Built from core ops, so it runs on
 * any backend.
 */
export function routingWeightsTensor(
  scores: Tensor,
  indices: Tensor,
  values: Tensor,
  normTopkProb: boolean,
  scale: number,
): Tensor {
  return record(values, 'moeRouteWeights', [scores], (g) => {
    if (g.dtype === 'f32' && scores.dtype === 'f32' && hasKernel(ROUTE_WEIGHTS_BACKWARD_OP, scores.backend.name))
      return [exec1(ROUTE_WEIGHTS_BACKWARD_OP, [g, scores.detach(), indices], { normTopkProb, scale })];
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
  /**
   * MaxVio statistics (MaxVio_batch, MaxVio_global) of the loads the caller feeds it: the loads are
   * device tensors, so reading them (`loadTracker.update(await routing.load.data())`) is the caller's call.
   */
  readonly loadTracker: MaxVioTracker;
  /** f32 [E]: loads accumulated (training mode) since the last updateBias(), on the device; updateBias() uses them by default. */
  pendingLoad: Tensor;
  /**
   * f32 [1]: tokens whose scores held a NaN, routed in training mode since the last reset, on the
   * device (a GPU router cannot throw; the CPU's throws at once): a training step reads it with its
   * logged scalars and stops with the layer's name.
   */
  pendingNaNTokens: Tensor;
  /** f32 [E]: load of the last routed batch (any mode). */
  lastLoad: Tensor | null = null;

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
    this.pendingLoad = full([E], 0, { dtype: 'f32', backend: opts.backend });
    this.pendingNaNTokens = full([1], 0, { dtype: 'f32', backend: opts.backend });
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
    const t = tensor(Float32Array.from(values), { shape: [this.numExperts], dtype: 'f32', backend: cur.backend });
    const next = cur.dtype === 'f32' ? t : cast(t, cur.dtype);
    this.setBuffer(BIAS, next);
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

  /** Routes x [..., H] (flattened to T tokens) on the gate's backend. */
  forward(x: Tensor, opts: RouteOptions = {}): GateOutput {
    return this.route(this.scores(x), opts);
  }

  /**
   * Selection, weights, dispatch and load from the scores [T, E] (the routing kernel on the f32 scores
   * with this gate's bias); accumulates the load in training mode.
   */
  route(scores: Tensor, opts: RouteOptions = {}): GateOutput {
    const cfg = this.config;
    const E = cfg.nRoutedExperts;
    const k = cfg.numExpertsPerTok;
    const T = scores.shape[0]!;
    let override: Int32Array | null = null;
    if (opts.routeOverride !== undefined) {
      const o = opts.routeOverride;
      if (o.length !== T * k)
        throw new Error(`MoEGate: routeOverride has ${o.length} entries, expected T*k = ${T}*${k}`);
      override = Int32Array.from(o);
      for (let i = 0; i < override.length; i++) {
        const e = override[i]!;
        if (!(e >= 0 && e < E) || e !== o[i])
          throw new Error(
            `MoEGate: routeOverride entry ${i} (token ${Math.floor(i / k)}) = ${o[i]} is not an expert index in [0, ${E})`,
          );
      }
    }
    const b = this.bias;
    const [indices, values, nanTokens] = routeTensors(scores, b && b.dtype !== 'f32' ? cast(b, 'f32') : b, override, {
      numExperts: E,
      k,
      nGroup: cfg.nGroup,
      topkGroup: cfg.topkGroup,
      groupScore: this.groupScore,
      normTopkProb: cfg.normTopkProb,
      routedScalingFactor: cfg.routedScalingFactor,
      scoringFunc: cfg.scoringFunc,
    });
    const weights = routingWeightsTensor(scores, indices, values, cfg.normTopkProb, cfg.routedScalingFactor);
    const plan = dispatchTensors(indices, E);
    const load = cast(plan.counts, 'f32');
    this.lastLoad = load;
    if (this.training && T > 0) {
      this.pendingLoad = add(this.pendingLoad, load);
      this.pendingNaNTokens = add(this.pendingNaNTokens, cast(nanTokens, 'f32'));
    }
    return { scores, indices, weights, plan, load, numTokens: T, k };
  }

  /** MaxVio of the last batch recorded in training mode (NaN before any). */
  get maxVioBatch(): number {
    return this.loadTracker.batch;
  }
  /** MaxVio of all loads recorded since creation or resetLoadStats(). */
  get maxVioGlobal(): number {
    return this.loadTracker.global;
  }
  /** Clears the loads and NaN-token count accumulated since the last updateBias() (what updateBias() does after using them). */
  resetPendingLoad(): void {
    this.pendingLoad = full([this.numExperts], 0, { dtype: 'f32', backend: this.backend });
    this.pendingNaNTokens = full([1], 0, { dtype: 'f32', backend: this.backend });
  }

  resetLoadStats(): void {
    this.loadTracker.reset();
    this.resetPendingLoad();
    this.lastLoad = null;
  }

  /**
   * Auxiliary-loss-free update on the device: b_i += gamma · sign(mean load − load_i) over `loads`
   * (default: the loads recorded in training mode since the last update, which are then cleared).
   * V3: gamma = 0.001. Computed in f64 where the backend has it (so bit-identical to the typed-array
   * updateBias), else f32. Returns the new bias tensor.
   */
  updateBias(loads?: Tensor | ArrayLike<number>, gamma = 0.001): Tensor {
    if (!this.hasBias)
      throw new Error('MoEGate.updateBias: this gate has no e_score_correction_bias (topk_method is not noaux_tc)');
    if (!Number.isFinite(gamma) || gamma < 0)
      throw new Error(`gamma must be a finite non-negative number, got ${gamma}`);
    const E = this.numExperts;
    const be = this.backend;
    let load: Tensor;
    if (loads === undefined) load = this.pendingLoad;
    else if (isTensor(loads)) load = loads;
    else {
      for (let i = 0; i < loads.length; i++)
        if (!Number.isFinite(loads[i]))
          throw new Error(`MoEGate.updateBias: load of expert ${i} is not finite (${loads[i]})`);
      load = tensor(Float64Array.from(loads), { dtype: 'f32', backend: be });
    }
    if (load.size !== E) throw new Error(`MoEGate.updateBias: ${load.size} loads for ${E} experts`);
    const ct: DType = be.supportsDType('f64') ? 'f64' : 'f32';
    const l = cast(reshape(load, [E]), ct);
    const cur = this.getBuffer(BIAS);
    const step = mul(sign(sub(mean(l), l)), gamma);
    const next = cast(cast(add(cast(cur, ct), step), 'f32'), cur.dtype);
    this.setBuffer(BIAS, next);
    if (loads === undefined) this.resetPendingLoad();
    return next;
  }

  /** The backend the gate's parameters live on. */
  get backend(): Backend {
    return this.weight.value.backend;
  }
}

function isTensor(x: unknown): x is Tensor {
  return typeof x === 'object' && x !== null && 'shape' in x && 'dtype' in x && 'backend' in x;
}
