// The routed experts' projections as W8A8 FP8 over device-side segments (DeepSeek-V3's inference
// recipe for an FP8 checkpoint): the rows x [N, K] (sorted by expert) are quantized in 1x128 tiles —
// per row, so cutting them into segments changes nothing — and each segment goes through its expert's
// E4M3 weight with 128x128 block scales in @dsv3/fp8's grouped block-scaled GEMM (CPU: the
// block-scaled GEMM per segment; WebGPU: one dispatch over stacked weights). The weights are
// constants (a checkpoint's bytes); the backward gives dX through the transposed FP8 weights
// (Dgrad with a 1x128-quantized gradient), as FP8Linear in W8A8 mode does.
import { noGrad, record, transpose, type Tensor } from '@dsv3/core';
import {
  fp8GroupedGemmBlockScaledT,
  newDeviceStackCache,
  quantizeActivationT,
  type QuantizedTensor,
  type ScaleFormat,
} from '@dsv3/fp8';

export interface Fp8ProjectionOptions {
  /** Quantization block (default 128). */
  block?: number;
  /** Scale format of the activation tiles (default 'fp32'; 'ue8m0': powers of two). */
  scaleFormat?: ScaleFormat;
}

/** One projection of every routed expert (gate, up or down) in FP8, with its device-side stacks. */
export class Fp8ExpertProjection {
  readonly block: number;
  readonly scaleFormat: ScaleFormat;
  readonly outFeatures: number;
  readonly inFeatures: number;
  private readonly cache = { q: newDeviceStackCache(), scales: newDeviceStackCache() };
  private transposed: { weights: QuantizedTensor[]; cache: Fp8ExpertProjection['cache'] } | null = null;

  constructor(
    /** Per expert: q fp8-e4m3 [out, in] and scales f32 [ceil(out/128), ceil(in/128)]. */
    readonly weights: readonly QuantizedTensor[],
    opts: Fp8ProjectionOptions = {},
  ) {
    if (weights.length === 0) throw new Error('Fp8ExpertProjection: no expert weights');
    this.block = opts.block ?? 128;
    this.scaleFormat = opts.scaleFormat ?? 'fp32';
    [this.outFeatures, this.inFeatures] = weights[0]!.q.shape as [number, number];
  }

  /** y [N, out] for x [N, in] (f32, rows sorted by expert) and the segment offsets i32 [E + 1]. */
  forward(x: Tensor, offsets: Tensor): Tensor {
    if (x.ndim !== 2 || x.shape[1] !== this.inFeatures || x.dtype !== 'f32')
      throw new Error(`FP8 experts: input must be f32 [N, ${this.inFeatures}], got ${x.dtype} [${x.shape.join(', ')}]`);
    const y = noGrad(() => this.product(x, offsets, this.weights, this.cache));
    return record(y, 'groupedFp8Linear', [x], (g) => [
      x.requiresGrad ? this.product(g, offsets, this.transposedWeights(), this.transposed!.cache) : null,
    ]);
  }

  private product(
    x: Tensor,
    offsets: Tensor,
    weights: readonly QuantizedTensor[],
    cache: Fp8ExpertProjection['cache'],
  ): Tensor {
    const xq = quantizeActivationT(x, { block: this.block, scaleFormat: this.scaleFormat });
    const y = fp8GroupedGemmBlockScaledT(xq.q, xq.scales, offsets, weights, { block: this.block, cache });
    // released now (on WebGPU after the recorded work that reads them)
    xq.q.dispose();
    xq.scales.dispose();
    return y;
  }

  /** Dgrad's operands: each weight's 128x128 tiles transposed (bytes and scale grid), made on first use. */
  private transposedWeights(): QuantizedTensor[] {
    this.transposed ??= {
      weights: noGrad(() => this.weights.map(({ q, scales }) => ({ q: transpose(q), scales: transpose(scales) }))),
      cache: { q: newDeviceStackCache(), scales: newDeviceStackCache() },
    };
    return this.transposed.weights;
  }
}

/** The gate / up / down projections of a MoE layer's routed experts in FP8. */
export interface Fp8Experts {
  gate: Fp8ExpertProjection;
  up: Fp8ExpertProjection;
  down: Fp8ExpertProjection;
}
