// An expert SwiGLU whose three projections are @dsv3/fp8's FP8Linear (E4M3 GEMMs with DeepSeek-V3's
// fine-grained scaling: 1x128 activation tiles, 128x128 weight blocks, f32 master weights), under the
// same checkpoint names as core's SwiGLU (gate_proj / up_proj / down_proj, each with `weight`).
import { Module, Rng, type InitOptions, type Tensor } from '@dsv3/core';
import { FP8Linear, type FP8LinearOptions } from '@dsv3/fp8';
import { swiglu } from './fused';

/** FP8Linear options the experts pass through (block, scaleFormat, saveInput, exactGemm). */
export type Fp8ExpertOptions = Pick<FP8LinearOptions, 'block' | 'scaleFormat' | 'saveInput' | 'exactGemm'>;

export class FP8SwiGLU extends Module {
  readonly gateProj: FP8Linear;
  readonly upProj: FP8Linear;
  readonly downProj: FP8Linear;
  constructor(
    readonly dim: number,
    readonly hidden: number,
    opts: InitOptions & Fp8ExpertOptions = {},
  ) {
    super();
    const rng = opts.rng ?? new Rng(opts.seed ?? 0);
    // FP8Linear keeps f32 master weights: the dtype option does not apply
    const { dtype: _dtype, ...rest } = opts;
    const o = { ...rest, rng };
    this.gateProj = this.child('gate_proj', new FP8Linear(dim, hidden, o));
    this.upProj = this.child('up_proj', new FP8Linear(dim, hidden, o));
    this.downProj = this.child('down_proj', new FP8Linear(hidden, dim, o));
  }
  forward(x: Tensor): Tensor {
    return this.downProj.forward(swiglu(this.gateProj.forward(x), this.upProj.forward(x)));
  }
}
