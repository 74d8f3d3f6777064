// AdamW with decoupled weight decay. Moments can be kept in bf16 (DeepSeek-V3's recipe) while the
// parameters themselves stay the fp32 master weights; the update math always runs in fp32.
import { noGrad } from '../autograd.js';
import { type Backend, hasKernel } from '../backend.js';
import { exec, exec1 } from '../ops/exec.js';
import type { DType } from '../dtype.js';
import { add, cast, div, mul, sqrt, sub } from '../ops/elementwise.js';
import { fromRaw, full } from '../ops/creation.js';
import type { Parameter } from '../nn/module.js';
import type { Tensor } from '../tensor.js';

export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  /** dtype of the first and second moments: 'f32' (default) or 'bf16'. */
  stateDType?: Extract<DType, 'f32' | 'bf16'>;
}

/** Attributes of the fused 'adamw' kernel a backend may register: [w, g, m, v] → [w', m', v']. */
export interface AdamWKernelAttrs {
  b1: number;
  b2: number;
  /** bias corrections 1 - β^step */
  c1: number;
  c2: number;
  eps: number;
  lr: number;
  /** the weight's decay factor 1 - lr · weightDecay (1: none) */
  decay: number;
  stateDType: 'f32' | 'bf16';
}

/** The fused update's op name (CPU and WebGPU register it); backends without it run the composed update. */
export const ADAMW_OP = 'adamw';
/**
 * The fused update that overwrites w, m and v of [w, g, m, v] and returns nothing (the CPU registers it):
 * no fresh buffers per step, which for big parameters would cost their page faults every step. The
 * parameter's tensor is then the optimizer's storage, updated in place: copy what you must keep.
 */
export const ADAMW_IN_PLACE_OP = 'adamwInPlace';
/**
 * The fused in-place update of many f32 parameters at once, [scale, w1, g1, m1, v1, …] → [] with each
 * gradient read as f32(g · scale) (the CPU registers it: one job of its GEMM engine's threads over the
 * parameters whose state is resident there, see TO_RESIDENT_OP).
 */
export const ADAMW_MANY_OP = 'adamwMany';
/** [x] → a copy of x where the backend's jobs update it in place (the CPU: its GEMM engine's memory). */
export const TO_RESIDENT_OP = 'toResident';

interface Slot {
  m: Tensor;
  v: Tensor;
}

export class AdamW {
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  readonly stateDType: 'f32' | 'bf16';
  step = 0;
  private readonly state = new Map<Parameter, Slot>();
  /**
   * Storages this optimizer made (its first fused update of a parameter) and nobody else was handed:
   * the in-place kernel may overwrite them. Weights and moments that came from elsewhere (a checkpoint,
   * setMoments, a caller's tensor) get one update into fresh buffers first.
   */
  private readonly owned = new WeakSet<object>();

  constructor(
    readonly params: Parameter[],
    opts: AdamWOptions = {},
  ) {
    this.lr = opts.lr ?? 1e-3;
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0;
    this.stateDType = opts.stateDType ?? 'f32';
    const [b1, b2] = this.betas;
    if (
      !(this.lr >= 0) ||
      !(b1 >= 0 && b1 < 1) ||
      !(b2 >= 0 && b2 < 1) ||
      !(this.eps > 0) ||
      !(this.weightDecay >= 0)
    ) {
      throw new RangeError(
        `AdamW: invalid hyperparameters lr=${this.lr} betas=${this.betas} eps=${this.eps} weightDecay=${this.weightDecay}`,
      );
    }
    if (this.stateDType !== 'f32' && this.stateDType !== 'bf16')
      throw new TypeError(`AdamW stateDType must be 'f32' or 'bf16', got ${this.stateDType}`);
    for (const p of params) {
      if (p.value.dtype !== 'f32' && p.value.dtype !== 'f64')
        throw new TypeError(`AdamW keeps master weights in f32; parameter has dtype ${p.value.dtype}`);
    }
  }

  /**
   * One update of every parameter that has a gradient. `gradScale` (a one-element tensor, e.g.
   * clipFactorOnDevice's factor): each gradient is read as g · gradScale, the factor rounded to the
   * gradient's dtype as a `g *= factor` pass would round it (the gradients themselves are not changed).
   */
  stepUpdate(lr = this.lr, gradScale?: Tensor): void {
    this.step++;
    const [b1, b2] = this.betas;
    const attrs: AdamWKernelAttrs = {
      b1,
      b2,
      c1: 1 - b1 ** this.step,
      c2: 1 - b2 ** this.step,
      eps: this.eps,
      lr,
      decay: this.weightDecay ? 1 - lr * this.weightDecay : 1,
      stateDType: this.stateDType,
    };
    noGrad(() => {
      const live = this.params.filter((p) => p.grad);
      const many = live.filter((p) => this.takesMany(p));
      if (many.length) this.updateMany(many, attrs, gradScale);
      const inMany = new Set(many);
      for (const p of live) if (!inMany.has(p)) this.updateOne(p, attrs, gradScale);
    });
  }

  /** Whether p's update runs in the backend's many-parameter kernel (f32 weights and gradients). */
  private takesMany(p: Parameter): boolean {
    const w = p.value;
    const name = w.backend.name;
    return (
      w.dtype === 'f32' && p.grad!.dtype === 'f32' && hasKernel(ADAMW_MANY_OP, name) && hasKernel(TO_RESIDENT_OP, name)
    );
  }

  /**
   * The many-parameter kernel over `ps`, whose weights and moments are kept where the backend's jobs
   * update them in place (TO_RESIDENT_OP): copied there once, when this optimizer does not own them yet
   * (its first step, after setMoments() restored them, after the weight was assigned from elsewhere).
   */
  private updateMany(ps: Parameter[], attrs: AdamWKernelAttrs, gradScale: Tensor | undefined): void {
    const byBackend = new Map<Backend, Parameter[]>();
    for (const p of ps) {
      const list = byBackend.get(p.value.backend);
      if (list) list.push(p);
      else byBackend.set(p.value.backend, [p]);
    }
    for (const [backend, list] of byBackend) {
      const inputs: Tensor[] = [gradScale ?? full([], 1, { dtype: 'f32', backend })];
      const weights: Tensor[] = [];
      for (const p of list) {
        const w = this.ownCopy(p.value);
        const slot = this.state.get(p) ?? this.init(w);
        const own: Slot = { m: this.ownCopy(slot.m), v: this.ownCopy(slot.v) };
        this.state.set(p, own);
        weights.push(w);
        inputs.push(w, p.grad!, own.m, own.v);
      }
      exec(ADAMW_MANY_OP, inputs, attrs, backend);
      // A new tensor on the same storage: caches keyed on the weight's tensor (FP8 copies) rebuild.
      list.forEach((p, i) => p.assign(weights[i]!));
    }
  }

  /** t itself when this optimizer owns its storage, else an owned copy made by TO_RESIDENT_OP. */
  private ownCopy(t: Tensor): Tensor {
    if (this.owns(t)) return t;
    const c = exec1(TO_RESIDENT_OP, [t], {});
    this.owned.add(c.storage);
    return c;
  }

  /** One parameter's update by the single-parameter kernels, or composed where a backend has none. */
  private updateOne(p: Parameter, attrs: AdamWKernelAttrs, gradScale: Tensor | undefined): void {
    const w = p.value;
    const g = gradScale ? mul(p.grad!, cast(gradScale, p.grad!.dtype)) : p.grad!;
    const slot = this.state.get(p) ?? this.init(w);
    if (g.dtype === w.dtype && hasKernel(ADAMW_OP, w.backend.name)) {
      const inPlace = hasKernel(ADAMW_IN_PLACE_OP, w.backend.name);
      if (inPlace && this.owns(w) && this.owns(slot.m) && this.owns(slot.v)) {
        exec(ADAMW_IN_PLACE_OP, [w, g, slot.m, slot.v], attrs);
        // A new tensor on the same storage: caches keyed on the weight's tensor (FP8 copies) rebuild.
        p.assign(w);
        return;
      }
      const [nw, m, v] = exec(ADAMW_OP, [w, g, slot.m, slot.v], attrs) as [Tensor, Tensor, Tensor];
      p.assign(nw);
      this.state.set(p, { m, v });
      // Fresh buffers nobody else holds: from the next step on they are updated in place.
      if (inPlace) for (const t of [nw, m, v]) this.owned.add(t.storage);
      return;
    }
    const [b1, b2] = this.betas;
    const { c1, c2, lr } = attrs;
    const f = (t: Tensor): Tensor => cast(t, w.dtype);
    const m = add(mul(f(slot.m), b1), mul(g, 1 - b1));
    const v = add(mul(f(slot.v), b2), mul(mul(g, g), 1 - b2));
    const update = div(div(m, c1), add(sqrt(div(v, c2)), this.eps));
    const decayed = this.weightDecay ? mul(w, 1 - lr * this.weightDecay) : w;
    p.assign(sub(decayed, mul(update, lr)));
    const sd = w.dtype === 'f64' ? 'f64' : this.stateDType;
    this.state.set(p, { m: cast(m, sd), v: cast(v, sd) });
  }

  private init(w: Tensor): Slot {
    const dtype = w.dtype === 'f64' ? 'f64' : this.stateDType;
    const z = (): Tensor => full(w.shape, 0, { dtype, backend: w.backend });
    return { m: z(), v: z() };
  }

  zeroGrad(): void {
    for (const p of this.params) p.value.zeroGrad();
  }

  private owns(t: Tensor): boolean {
    return this.owned.has(t.storage);
  }

  /**
   * The moments of one parameter (for checkpoints and tests); the caller may keep them. Where the
   * backend reads synchronously (the CPU) they are copies, and the optimizer keeps updating its own in
   * place (state resident in the GEMM engine's memory stays there, rather than a handed-over block
   * waiting for the collector while a fresh one is allocated); elsewhere they are handed over, and the
   * next update writes new ones instead of overwriting these.
   */
  moments(p: Parameter): Slot | undefined {
    const s = this.state.get(p);
    if (!s) return s;
    if (s.m.backend.readSync) {
      const copy = (t: Tensor) => fromRaw(t.dtype, t.shape, t.rawSync(), t.backend);
      return { m: copy(s.m), v: copy(s.v) };
    }
    for (const t of [s.m, s.v]) this.owned.delete(t.storage);
    return s;
  }

  /** Restores the moments of one parameter (resuming from a checkpoint); shapes must match the parameter. */
  setMoments(p: Parameter, slot: Slot): void {
    const want = p.value.shape.join(',');
    if (slot.m.shape.join(',') !== want || slot.v.shape.join(',') !== want) {
      throw new Error(
        `AdamW.setMoments: moments of shape [${slot.m.shape}] / [${slot.v.shape}] for a parameter of shape [${want}]`,
      );
    }
    const sd = p.value.dtype === 'f64' ? 'f64' : this.stateDType;
    this.state.set(p, { m: noGrad(() => cast(slot.m, sd)), v: noGrad(() => cast(slot.v, sd)) });
  }
}
