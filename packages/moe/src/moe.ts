// The DeepSeekMoE layer: gate, routed SwiGLU experts, shared experts.
//
//   out = Σ_k w_k · Expert_{e_k}(x) + Shared(x)
//
// One forward for every backend, with no host round trip: the gate routes on the device and sorts the
// (token, slot) pairs by expert there (counts, offsets, permutation as i32 tensors), the token rows are
// gathered once in that order, the experts' gate/up/down projections run as grouped GEMMs over the
// per-expert segments whose bounds stay on the device, and the rows, scaled by their routing weights,
// are scatter-added back to their tokens. No token is dropped. Everything is core ops plus kernels with
// recorded backwards, so autograd reaches the input, every expert, the shared experts and the gate
// weight (through the routing weights); the correction bias gets no gradient.
import {
  add,
  cast,
  concat,
  full,
  indexSelect,
  Module,
  ModuleList,
  narrow,
  noGrad,
  reshape,
  Rng,
  SwiGLU,
  type DType,
  type InitOptions,
  type Tensor,
} from '@dsv3/core';
import { resolveMoEConfig, validateMoEConfig, type HfMoEConfig, type MoEConfig } from './config';
import { dispatchTensors, type DeviceDispatch } from './device-route';
import type { QuantizedTensor } from '@dsv3/fp8';
import { cpuExpertsInference } from './experts-cpu';
import { FP8SwiGLU, type Fp8ExpertOptions } from './fp8-expert';
import { swiglu, weightedScatterAdd } from './fused';
import { MoEGate, type GateOutput, type RouteOptions } from './gate';
import { groupedLinear, type GroupedImpl } from './grouped';
import { Fp8ExpertProjection, Fp8TrainedProjection, type Fp8Experts, type Fp8ProjectionOptions } from './grouped-fp8';
import { newStackCache } from './grouped-kernels';

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

/** t rounded to bf16 and back (differentiable: the gradient is rounded the same way). */
const bf16Round = (t: Tensor): Tensor => cast(cast(t, 'bf16'), t.dtype);

export type MoEForwardOptions = RouteOptions;

/** The routing of one forward (the gate's output, its dispatch plan included). */
export type MoERouting = GateOutput;

export interface MoEOutput {
  output: Tensor;
  routing: MoERouting;
}

/**
 * A forward that communicates: expert parallelism (@dsv3/parallel, @dsv3/serve) sizes its all-to-all
 * from split counts it must read on the host, so its forward is asynchronous by nature.
 */
export type DistributedMoEForward = (x: Tensor, opts: MoEForwardOptions) => Promise<Tensor>;

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
   * weights (always so for FP8SwiGLU experts). May change after construction, deliberately: a loader
   * that swaps the experts' projections for ones that compute something other than a plain matmul of
   * their weight (the CPU's resident FP8 GEMV) switches it on. W8A8 checkpoints and the training
   * recipes stay on the grouped path instead (useFp8Experts, expertRecipe), on every backend.
   */
  expertsAsModules: boolean;
  /**
   * Set by expert parallelism: the layer then runs through this communicating forward (runMoE awaits
   * it), and forward() throws. null for a layer that runs in this process.
   */
  distributed: DistributedMoEForward | null = null;
  /**
   * The routed experts in FP8 (W8A8, set by useFp8Experts from a checkpoint's bytes): their GEMMs then
   * run over these weights instead of the experts' parameters. null: the parameters.
   */
  fp8Experts: Fp8Experts | null = null;
  /**
   * How the grouped GEMMs of the routed experts compute over their parameters (a training recipe,
   * set by @dsv3/train's applyPrecision): 'f32' as stored; 'bf16': every operand rounded to bf16
   * (rows, weights, and the gradients flowing back through them), f32 accumulation — what BF16
   * tensor-core training computes; 'fp8': DeepSeek-V3's FP8 recipe (E4M3 Fprop / Dgrad / Wgrad with
   * 1x128 activation tiles, 128x128 weight blocks, 128x1 token tiles per segment; see grouped-fp8.ts).
   */
  expertRecipe: 'f32' | 'bf16' | 'fp8' = 'f32';
  /** Routing of the last forward (for the bias update / balance loss of a training loop). */
  lastRouting: MoERouting | null = null;
  /** The device-side stacks of the experts' gate / up / down weights the WebGPU grouped GEMM binds. */
  private readonly stacks = { gate: newStackCache(), up: newStackCache(), down: newStackCache() };
  /** The FP8 recipe's projections (their weight tiles and device stacks), used when expertRecipe is 'fp8'. */
  private readonly fp8Trained = {
    gate: new Fp8TrainedProjection(),
    up: new Fp8TrainedProjection(),
    down: new Fp8TrainedProjection(),
  };

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

  /** out [..., H] for x [..., H], on any backend. */
  forward(x: Tensor, opts: MoEForwardOptions = {}): Tensor {
    return this.forwardWithRouting(x, opts).output;
  }

  forwardWithRouting(x: Tensor, opts: MoEForwardOptions = {}): MoEOutput {
    if (this.distributed)
      throw new Error(
        'MoE.forward: this layer is expert-parallel (its forward communicates); run it with await runMoE(layer, x)',
      );
    this.checkInput(x);
    const x2 = reshape(x, [-1, this.config.hiddenSize]);
    const gate = this.gate.forward(x2, opts);
    this.lastRouting = gate;
    // The CPU inference path computes f32 experts only: FP8 experts and the bf16 recipe take the general one.
    const inference =
      x2.shape[0] === 0 || this.fp8Experts || this.expertRecipe !== 'f32'
        ? null
        : cpuExpertsInference({
            x2,
            plan: gate.plan,
            weights: gate.weights,
            experts: this.experts.items,
            shared: this.sharedExperts,
            asModules: this.expertLinear === 'fp8' || this.expertsAsModules,
          });
    if (inference) return { output: reshape(inference, x.shape), routing: gate };
    let out =
      x2.shape[0] === 0
        ? full(x2.shape, 0, { dtype: x.dtype, backend: x.backend })
        : this.expertsOver(x2, gate.plan, gate.weights);
    if (this.sharedExperts) out = add(out, this.sharedExperts.forward(x2));
    return { output: reshape(out, x.shape), routing: gate };
  }

  /**
   * The routed experts for given routing: Σ_j w[t, j] · Expert_{indices[t, j]}(x[t]) for x [T, H]
   * (no shared experts); `indices` i32 [T, k] on x's backend, `weights` [T, k] (may carry gradient).
   */
  routedExperts(x2: Tensor, indices: Tensor, weights: Tensor): Tensor {
    if (x2.shape[0] === 0) return full(x2.shape, 0, { dtype: x2.dtype, backend: x2.backend });
    return this.expertsOver(x2, dispatchTensors(indices, this.config.nRoutedExperts), weights);
  }

  private expertsOver(x2: Tensor, plan: DeviceDispatch, weights: Tensor): Tensor {
    const T = x2.shape[0]!;
    const xs = indexSelect(x2, plan.rows, 0); // [T·k, H], grouped by expert
    let y: Tensor; // [T·k, H], dispatch order
    if (this.expertLinear === 'fp8' || this.expertsAsModules) y = this.expertModules(xs, plan.offsets);
    else if (this.fp8Experts) {
      const { gate, up, down } = this.fp8Experts;
      y = down.forward(
        swiglu(gate.forward(xs, plan.offsets), up.forward(xs, plan.offsets), { impl: this.impl }),
        plan.offsets,
      );
    } else {
      const ex = this.experts.items as SwiGLU[];
      const run = (h: Tensor, ws: Tensor[], which: keyof MoE['stacks']) =>
        this.groupedProjection(h, ws, plan.offsets, which);
      const g = run(
        xs,
        ex.map((m) => m.gateProj.weight.value),
        'gate',
      );
      const u = run(
        xs,
        ex.map((m) => m.upProj.weight.value),
        'up',
      );
      y = run(
        swiglu(g, u, { impl: this.impl }),
        ex.map((m) => m.downProj.weight.value),
        'down',
      );
    }
    const w = cast(indexSelect(reshape(weights, [-1]), plan.permutation, 0), x2.dtype); // [T·k], dispatch order
    return weightedScatterAdd(y, w, plan.rows, T, { impl: this.impl });
  }

  /**
   * Gives every routed expert a gradient: zeros for those without one. The CPU's grouped GEMM gives an
   * expert with no rows none (it reads its own segment bounds), a GPU's gives zeros (knowing would be a
   * read-back), and a data/expert-parallel step sums flat gradient buffers (zeros where a rank had none).
   * With zeros everywhere all of them hand AdamW the same set, and an idle expert's moments and weight
   * decay move as in a flat-buffer optimizer (DeepSeek-V3's ZeRO-1, Megatron's distributed optimizer).
   */
  fillIdleExpertGrads(): void {
    noGrad(() => {
      for (const m of this.experts.items)
        for (const p of m.parameters())
          if (!p.grad) p.grad = full(p.value.shape, 0, { dtype: p.value.dtype, backend: p.value.backend });
    });
  }

  /**
   * Runs the routed experts as W8A8 FP8 over the given weights (per expert: E4M3 bytes [out, in] and
   * 128x128 block scales, a checkpoint's `weight` / `weight_scale_inv`) in the grouped block-scaled
   * GEMM, on any backend and with nothing read back; activations are quantized in 1x128 tiles.
   */
  useFp8Experts(
    weights: { gate: readonly QuantizedTensor[]; up: readonly QuantizedTensor[]; down: readonly QuantizedTensor[] },
    opts: Fp8ProjectionOptions = {},
  ): void {
    const { hiddenSize: H, moeIntermediateSize: I, nRoutedExperts: E } = this.config;
    const want = { gate: [I, H], up: [I, H], down: [H, I] } as const;
    for (const name of ['gate', 'up', 'down'] as const) {
      const ws = weights[name];
      if (ws.length !== E) throw new Error(`MoE.useFp8Experts: ${ws.length} ${name} weights for ${E} routed experts`);
      ws.forEach(({ q }, e) => {
        if (q.shape[0] !== want[name][0] || q.shape[1] !== want[name][1] || q.dtype !== 'fp8-e4m3')
          throw new Error(
            `MoE.useFp8Experts: the ${name} weight of expert ${e} is ${q.dtype} [${q.shape.join(', ')}], expected fp8-e4m3 [${want[name].join(', ')}]`,
          );
      });
    }
    this.fp8Experts = {
      gate: new Fp8ExpertProjection(weights.gate, opts),
      up: new Fp8ExpertProjection(weights.up, opts),
      down: new Fp8ExpertProjection(weights.down, opts),
    };
  }

  /** One grouped projection of the routed experts under the layer's recipe (see expertRecipe). */
  private groupedProjection(h: Tensor, ws: Tensor[], offsets: Tensor, which: keyof MoE['stacks']): Tensor {
    const opts = { impl: this.impl, cache: this.stacks[which] };
    if (this.expertRecipe === 'bf16') return groupedLinear(bf16Round(h), ws.map(bf16Round), offsets, opts);
    if (this.expertRecipe === 'fp8') return this.fp8Trained[which].forward(h, ws, offsets);
    return groupedLinear(h, ws, offsets, opts);
  }

  /**
   * Each expert's own module on its segment (FP8 experts, expertsAsModules): a per-expert loop whose
   * bounds must be on the host, so only on a backend that reads synchronously (the CPU, where the
   * offsets are its own memory). FP8Linear is a per-matrix layer; its 1x128 activation tiles are per
   * token, so cutting the rows into segments does not change the quantization.
   */
  private expertModules(xs: Tensor, offsets: Tensor): Tensor {
    if (!offsets.backend.readSync)
      throw new Error(
        `MoE: experts run as their own modules (FP8 experts or expertsAsModules) need the segment bounds on the host, which the ${offsets.backend.name} backend cannot give without a read-back; use f32 experts (the grouped GEMM) there`,
      );
    const offs = offsets.dataSync();
    const parts: Tensor[] = [];
    for (let e = 0; e < this.config.nRoutedExperts; e++) {
      const c = offs[e + 1]! - offs[e]!;
      if (c > 0) parts.push(this.experts.at(e).forward(narrow(xs, 0, offs[e]!, c)));
    }
    return concat(parts, 0);
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

/**
 * The layer's output for x, through its distributed forward when expert parallelism installed one,
 * else its forward (for callers that may meet either kind of layer).
 */
export async function runMoE(moe: MoE, x: Tensor, opts: MoEForwardOptions = {}): Promise<Tensor> {
  return moe.distributed ? moe.distributed(x, opts) : moe.forward(x, opts);
}
