// The DeepSeekMoE layer: gate, routed SwiGLU experts, shared experts.
//
//   out = Σ_k w_k · Expert_{e_k}(x) + Shared(x)
//
// Dispatch: the (token, slot) pairs are sorted by expert (dispatchPlan: counts, offsets, permutation),
// the token rows gathered once in that order, the experts' gate/up/down projections run as grouped GEMMs
// over the contiguous per-expert segments, and the rows, scaled by their routing weights, are
// scatter-added back to their tokens. No token is dropped. Everything after the routing is core ops plus
// kernels with recorded backwards, so autograd reaches the input, every expert, the shared experts and
// the gate weight (through the routing weights); the correction bias gets no gradient.
import {
  cast,
  concat,
  full,
  narrow,
  indexSelect,
  Module,
  ModuleList,
  reshape,
  Rng,
  SwiGLU,
  tensor,
  add,
  type DType,
  type InitOptions,
  type Tensor,
} from '@dsv3/core';
import { resolveMoEConfig, validateMoEConfig, type HfMoEConfig, type MoEConfig } from './config';
import { dispatchPlan, type DispatchPlan } from './dispatch';
import { MoEGate, type GateOutput, type RouteOptions } from './gate';
import { FP8SwiGLU, type Fp8ExpertOptions } from './fp8-expert';
import { swiglu, weightedScatterAdd } from './fused';
import { groupedLinear, type GroupedImpl } from './grouped';

export interface MoEOptions extends InitOptions {
  /** dtype of the gate weight (default: `dtype`, else f32); the scores are f32 (f64 for an f64 gate). */
  gateDType?: DType;
  /** dtype of the correction bias buffer (default f32). */
  biasDType?: DType;
  /** Grouped GEMM implementation: 'auto' (default: the backend's fused kernel if it has one), 'fused', 'composed'. */
  impl?: GroupedImpl;
  /**
   * 'f32' (default): experts are core SwiGLUs of `dtype`, run as grouped GEMMs. 'fp8': routed and shared
   * experts are FP8SwiGLU (@dsv3/fp8 FP8Linear: E4M3 GEMMs, f32 master weights, f32 activations), run per
   * expert segment.
   */
  expertLinear?: 'f32' | 'fp8';
  /** FP8Linear options of the experts when expertLinear is 'fp8'. */
  fp8?: Fp8ExpertOptions;
  /** Run each expert's own module on its segment instead of the grouped GEMM (see MoE.expertsAsModules). */
  expertsAsModules?: boolean;
}

export type Expert = SwiGLU | FP8SwiGLU;

export type MoEForwardOptions = RouteOptions;

/** The routing of one forward: the gate's output plus the dispatch plan. */
export interface MoERouting extends GateOutput {
  plan: DispatchPlan;
}

export interface MoEOutput {
  output: Tensor;
  routing: MoERouting;
}

export class MoE extends Module {
  readonly config: MoEConfig;
  readonly gate: MoEGate;
  readonly experts: ModuleList<Expert>;
  /** One SwiGLU of width moeIntermediateSize × nSharedExperts (null when nSharedExperts = 0). */
  readonly sharedExperts: Expert | null;
  /** How the experts' GEMMs run: 'f32' (core SwiGLU, grouped GEMMs) or 'fp8' (FP8Linear). */
  readonly expertLinear: 'f32' | 'fp8';
  /** dtype of the experts (and of the input the layer expects). */
  readonly dtype: DType;
  /** Grouped GEMM implementation, fixed at construction (MoEOptions.impl). */
  readonly impl: GroupedImpl;
  /**
   * Run each expert's own module on its token segment instead of the grouped GEMM over the expert
   * weights (always so for FP8 experts). The layer's one setting that may change after construction,
   * deliberately: a loader that swaps the experts' projections for ones that compute something other
   * than a plain matmul of their weight (W8A8 projections loaded from an FP8 checkpoint) switches it on.
   */
  expertsAsModules: boolean;
  /** Routing of the last forward (for the bias update / balance loss of a training loop). */
  lastRouting: MoERouting | null = null;

  constructor(config: MoEConfig | HfMoEConfig, opts: MoEOptions = {}) {
    super();
    const cfg = resolveMoEConfig(config);
    validateMoEConfig(cfg);
    this.config = { ...cfg };
    this.expertLinear = opts.expertLinear ?? 'f32';
    if (this.expertLinear !== 'f32' && this.expertLinear !== 'fp8')
      throw new Error(`MoE: expertLinear must be 'f32' or 'fp8', got ${JSON.stringify(opts.expertLinear)}`);
    if (this.expertLinear === 'fp8' && opts.dtype !== undefined && opts.dtype !== 'f32') {
      throw new TypeError(
        `MoE: FP8 experts keep f32 master weights and take f32 activations; dtype ${opts.dtype} is not supported with expertLinear 'fp8'`,
      );
    }
    this.dtype = opts.dtype ?? 'f32';
    this.impl = opts.impl ?? 'auto';
    this.expertsAsModules = opts.expertsAsModules ?? false;
    const rng = opts.rng ?? new Rng(opts.seed ?? 0);
    const init = { ...opts, rng };
    this.gate = this.child('gate', new MoEGate(cfg, init));
    const H = cfg.hiddenSize;
    const I = cfg.moeIntermediateSize;
    const make = (width: number): Expert =>
      this.expertLinear === 'fp8' ? new FP8SwiGLU(H, width, { ...init, ...opts.fp8 }) : new SwiGLU(H, width, init);
    this.experts = this.child('experts', new ModuleList<Expert>());
    for (let e = 0; e < cfg.nRoutedExperts; e++) this.experts.push(make(I));
    this.sharedExperts = cfg.nSharedExperts > 0 ? this.child('shared_experts', make(I * cfg.nSharedExperts)) : null;
  }

  /** out [..., H] for x [..., H]; needs synchronous readback of the routing (the CPU backend). */
  forward(x: Tensor, opts: MoEForwardOptions = {}): Tensor {
    return this.forwardWithRouting(x, opts).output;
  }

  /** out [..., H] on any backend (awaits the routing indices). */
  async forwardAsync(x: Tensor, opts: MoEForwardOptions = {}): Promise<Tensor> {
    return (await this.forwardWithRoutingAsync(x, opts)).output;
  }

  forwardWithRouting(x: Tensor, opts: MoEForwardOptions = {}): MoEOutput {
    this.checkInput(x);
    if (!x.backend.readSync) {
      throw new Error(
        `MoE.forward: the ${x.backend.name} backend cannot read the routing indices back synchronously; use await moe.forwardAsync(x) (or forwardWithRoutingAsync)`,
      );
    }
    const x2 = reshape(x, [-1, this.config.hiddenSize]);
    if (x2.shape[0] === 0) return this.empty(x);
    return this.finish(x, x2, this.gate.forward(x2, opts));
  }

  async forwardWithRoutingAsync(x: Tensor, opts: MoEForwardOptions = {}): Promise<MoEOutput> {
    this.checkInput(x);
    const x2 = reshape(x, [-1, this.config.hiddenSize]);
    if (x2.shape[0] === 0) return this.empty(x);
    return this.finish(x, x2, await this.gate.forwardAsync(x2, opts));
  }

  /**
   * The routed experts for given routing: Σ_j w[t, j] · Expert_{indices[t, j]}(x[t]) for x [T, H]
   * (no shared experts). `weights` [T, k] may carry gradient.
   */
  routedExperts(x2: Tensor, indicesHost: Int32Array, weights: Tensor, plan?: DispatchPlan): Tensor {
    const E = this.config.nRoutedExperts;
    const T = x2.shape[0]!;
    const k = indicesHost.length / T;
    const p = plan ?? dispatchPlan(indicesHost, k, E);
    const be = x2.backend;
    const rows = tensor(p.sortedTokens, { dtype: 'i32', backend: be });
    const perm = tensor(p.permutation, { dtype: 'i32', backend: be });
    const xs = indexSelect(x2, rows, 0); // [T·k, H], grouped by expert
    const offs = p.offsets;
    let y: Tensor; // [T·k, H], dispatch order
    if (this.expertLinear === 'fp8' || this.expertsAsModules) {
      // FP8Linear is a per-matrix layer: one SwiGLU per non-empty expert segment (1x128 activation
      // tiles are per token, so cutting the rows into segments does not change the quantization)
      const parts: Tensor[] = [];
      for (let e = 0; e < E; e++) {
        const c = offs[e + 1]! - offs[e]!;
        if (c > 0) parts.push(this.experts.at(e).forward(narrow(xs, 0, offs[e]!, c)));
      }
      y = concat(parts, 0);
    } else {
      const ex = this.experts.items as SwiGLU[];
      const opt = { impl: this.impl };
      const g = groupedLinear(
        xs,
        ex.map((m) => m.gateProj.weight.value),
        offs,
        opt,
      );
      const u = groupedLinear(
        xs,
        ex.map((m) => m.upProj.weight.value),
        offs,
        opt,
      );
      y = groupedLinear(
        swiglu(g, u, opt),
        ex.map((m) => m.downProj.weight.value),
        offs,
        opt,
      );
    }
    const w = cast(indexSelect(reshape(weights, [-1]), perm, 0), x2.dtype); // [T·k], dispatch order
    return weightedScatterAdd(y, w, rows, T, { impl: this.impl });
  }

  private finish(x: Tensor, x2: Tensor, gate: GateOutput): MoEOutput {
    const plan = dispatchPlan(gate.indicesHost, gate.k, this.config.nRoutedExperts);
    let out = this.routedExperts(x2, gate.indicesHost, gate.weights, plan);
    if (this.sharedExperts) out = add(out, this.sharedExperts.forward(x2));
    const routing: MoERouting = { ...gate, plan };
    this.lastRouting = routing;
    return { output: reshape(out, x.shape), routing };
  }

  private empty(x: Tensor): MoEOutput {
    const E = this.config.nRoutedExperts;
    const k = this.config.numExpertsPerTok;
    const be = x.backend;
    const indicesHost = new Int32Array(0);
    const cdt = this.gate.computeDType;
    const routing: MoERouting = {
      scores: full([0, E], 0, { dtype: cdt, backend: be }),
      indices: full([0, k], 0, { dtype: 'i32', backend: be }),
      weights: full([0, k], 0, { dtype: cdt, backend: be }),
      indicesHost,
      weightsHost: cdt === 'f64' ? new Float64Array(0) : new Float32Array(0),
      load: new Float64Array(E),
      maxVio: 0,
      numTokens: 0,
      k,
      plan: dispatchPlan(indicesHost, k, E),
    };
    this.lastRouting = routing;
    return { output: full(x.shape, 0, { dtype: x.dtype, backend: be }), routing };
  }

  private checkInput(x: Tensor): void {
    const H = this.config.hiddenSize;
    if (x.ndim < 1 || x.shape[x.ndim - 1] !== H) {
      throw new Error(
        `MoE: input has hidden size ${x.shape[x.ndim - 1] ?? 'none'} (shape [${x.shape.join(', ')}]), expected hidden_size ${H}`,
      );
    }
    if (x.dtype !== this.dtype) {
      throw new TypeError(
        `MoE: input is ${x.dtype} but the experts are ${this.dtype}; cast the input (or build the layer with dtype '${x.dtype}')`,
      );
    }
    const be = this.gate.weight.value.backend;
    if (x.backend !== be)
      throw new Error(
        `MoE: the input lives on the ${x.backend.name} backend, the layer on ${be.name}; move one with toBackend()`,
      );
  }

  /**
   * Loads this layer from checkpoint tensors named `${prefix}gate.weight`, `${prefix}experts.0.gate_proj.weight`,
   * ... (e.g. prefix 'model.layers.1.mlp.'), casting each to the dtype of its parameter / buffer. Other
   * names are ignored; a missing one is an error.
   */
  loadCheckpoint(tensors: Record<string, Tensor>, prefix = ''): void {
    const own = this.stateDict();
    const picked: Record<string, Tensor> = {};
    const missing: string[] = [];
    for (const [name, cur] of Object.entries(own)) {
      const t = tensors[prefix + name];
      if (!t) missing.push(prefix + name);
      else picked[name] = t.dtype === cur.dtype ? t : cast(t.detach(), cur.dtype);
    }
    if (missing.length)
      throw new Error(
        `MoE.loadCheckpoint: missing ${missing.length} tensor(s): ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`,
      );
    this.loadStateDict(picked);
  }
}
