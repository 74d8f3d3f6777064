// Basic layers: Linear, Embedding, RMSNorm and the SwiGLU MLP used by DeepSeek's dense layers and experts.
import { Rng } from '../rng.js';
import { tensor, full } from '../ops/creation.js';
import { embedding as embed } from '../ops/indexing.js';
import { linear } from '../ops/linalg.js';
import { rmsNorm } from '../ops/nn.js';
import { mul, silu } from '../ops/elementwise.js';
import type { Tensor } from '../tensor.js';
import { Module, type ModuleOptions, type Parameter } from './module.js';

export interface InitOptions extends ModuleOptions {
  /** Weight init std (DeepSeek-V3 uses 0.006); default 1/sqrt(fan_in). */
  std?: number;
  rng?: Rng;
  seed?: number;
}

function normal(shape: number[], std: number, o: InitOptions): Tensor {
  const rng = o.rng ?? new Rng(o.seed ?? 0);
  const v = rng.fillNormal(new Float64Array(shape.reduce((a, b) => a * b, 1)), 0, std);
  return tensor(v, { shape, dtype: o.dtype ?? 'f32', backend: o.backend });
}

export class Linear extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter | null;
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: InitOptions & { bias?: boolean } = {},
  ) {
    super();
    this.weight = this.param('weight', normal([outFeatures, inFeatures], opts.std ?? 1 / Math.sqrt(inFeatures), opts));
    this.bias = opts.bias
      ? this.param('bias', full([outFeatures], 0, { dtype: opts.dtype, backend: opts.backend }))
      : null;
  }
  forward(x: Tensor): Tensor {
    return linear(x, this.weight.value, this.bias?.value);
  }
}

export class Embedding extends Module {
  readonly weight: Parameter;
  constructor(
    readonly numEmbeddings: number,
    readonly dim: number,
    opts: InitOptions = {},
  ) {
    super();
    this.weight = this.param('weight', normal([numEmbeddings, dim], opts.std ?? 1, opts));
  }
  forward(ids: Tensor): Tensor {
    return embed(ids, this.weight.value);
  }
}

export class RMSNorm extends Module {
  readonly weight: Parameter;
  constructor(
    readonly dim: number,
    readonly eps = 1e-6,
    opts: ModuleOptions = {},
  ) {
    super();
    this.weight = this.param('weight', full([dim], 1, opts));
  }
  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight.value, this.eps);
  }
}

/** down(silu(gate(x)) * up(x)), with Hugging Face's names gate_proj / up_proj / down_proj. */
export class SwiGLU extends Module {
  readonly gateProj: Linear;
  readonly upProj: Linear;
  readonly downProj: Linear;
  constructor(
    readonly dim: number,
    readonly hidden: number,
    opts: InitOptions = {},
  ) {
    super();
    const rng = opts.rng ?? new Rng(opts.seed ?? 0);
    this.gateProj = this.child('gate_proj', new Linear(dim, hidden, { ...opts, rng }));
    this.upProj = this.child('up_proj', new Linear(dim, hidden, { ...opts, rng }));
    this.downProj = this.child('down_proj', new Linear(hidden, dim, { ...opts, rng }));
  }
  forward(x: Tensor): Tensor {
    return this.downProj.forward(mul(silu(this.gateProj.forward(x)), this.upProj.forward(x)));
  }
}
