// The routed experts' projections in FP8 over device-side segments, two ways:
// - Fp8ExpertProjection, W8A8 inference (DeepSeek-V3's recipe for an FP8 checkpoint): the rows x [N, K] (sorted by expert) are quantized in 1x128 tiles —
// per row, so cutting them into segments changes nothing — and each segment goes through its expert's
// E4M3 weight with 128x128 block scales in @dsv3/fp8's grouped block-scaled GEMM (CPU: the
// block-scaled GEMM per segment; WebGPU: one dispatch over stacked weights). The weights are
// constants (a checkpoint's bytes); the backward gives dX through the transposed FP8 weights
// (Dgrad with a 1x128-quantized gradient), as FP8Linear in W8A8 mode does.
// - Fp8TrainedProjection, DeepSeek-V3's FP8 training recipe over the experts' f32 master weights, as
//   FP8Linear computes it per expert: Fprop X (1x128) · W_e (128x128), Dgrad dY (1x128) · W_eᵀ (the
//   same tiles transposed), Wgrad dY_segᵀ · X_seg with 128x1 tiles along the tokens that restart at
//   each segment (X re-quantized from its Fprop FP8 copy), all in the grouped FP8 kernels.
import { noGrad, record, transpose, type Tensor } from '@dsv3/core';
import {
  dequantizeActivationT,
  fp8GroupedGemmBlockScaledT,
  fp8GroupedWgradT,
  groupedQuantizeActivationTransposedT,
  newDeviceStackCache,
  quantizeActivationT,
  quantizeWeightT,
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

const newCaches = () => ({ q: newDeviceStackCache(), scales: newDeviceStackCache() });

/** FP8 tiles of the weights, made once per set of weight tensors (an optimizer assigns new ones each step). */
interface WeightTiles {
  sources: readonly Tensor[];
  fwd: QuantizedTensor[];
  bwd: QuantizedTensor[] | null;
}

/** One projection of every routed expert trained with the FP8 recipe (see the file comment). */
export class Fp8TrainedProjection {
  private tiles: WeightTiles | null = null;
  private readonly fwdCache = newCaches();
  private readonly bwdCache = newCaches();

  constructor(readonly opts: Fp8ProjectionOptions = {}) {}

  /**
   * y [N, out] for x [N, in] (f32, rows sorted by expert), the experts' f32 weights [out, in] and the
   * segment offsets i32 [E + 1]; differentiable w.r.t. x and every weight. As groupedLinear: an expert
   * whose segment is known on the host to be empty gets no gradient, else every expert gets one.
   */
  forward(x: Tensor, weights: readonly Tensor[], offsets: Tensor): Tensor {
    const block = this.opts.block ?? 128;
    const qo = { block, scaleFormat: this.opts.scaleFormat ?? 'fp32' };
    const tiles = this.weightTiles(weights, block);
    const { y, xq } = noGrad(() => {
      const xq = quantizeActivationT(x, qo);
      return {
        xq,
        y: fp8GroupedGemmBlockScaledT(xq.q, xq.scales, offsets, tiles.fwd, { block, cache: this.fwdCache }),
      };
    });
    const host = offsets.backend.readSync ? offsets.dataSync() : null;
    return record(y, 'groupedFp8TrainLinear', [x, ...weights], (g) => {
      const temps: Tensor[] = [];
      let dx: Tensor | null = null;
      if (x.requiresGrad) {
        const gq = quantizeActivationT(g, qo);
        tiles.bwd ??= tiles.fwd.map(({ q, scales }) => ({ q: transpose(q), scales: transpose(scales) }));
        dx = fp8GroupedGemmBlockScaledT(gq.q, gq.scales, offsets, tiles.bwd, { block, cache: this.bwdCache });
        temps.push(gq.q, gq.scales);
      }
      const want: number[] = [];
      weights.forEach((w, e) => {
        if (w.requiresGrad && (host === null || host[e + 1]! > host[e]!)) want.push(e);
      });
      const dws: (Tensor | null)[] = weights.map(() => null);
      if (want.length) {
        const gT = groupedQuantizeActivationTransposedT(g, offsets, qo);
        const xs = dequantizeActivationT(xq.q, xq.scales, { block });
        const xT = groupedQuantizeActivationTransposedT(xs, offsets, qo);
        fp8GroupedWgradT(gT, xT, offsets, want, { block }).forEach((dw, i) => (dws[want[i]!] = dw));
        temps.push(gT.q, gT.scales, xs, xT.q, xT.scales);
      }
      // released now (on WebGPU after the recorded work that reads them)
      for (const t of [...temps, xq.q, xq.scales]) t.dispose();
      return [dx, ...dws];
    });
  }

  private weightTiles(weights: readonly Tensor[], block: number): WeightTiles {
    const t = this.tiles;
    if (t && t.sources.length === weights.length && t.sources.every((w, i) => w === weights[i])) return t;
    const fwd = noGrad(() => weights.map((w) => quantizeWeightT(w, { block })));
    for (const old of [...(t?.fwd ?? []), ...(t?.bwd ?? [])]) {
      old.q.dispose();
      old.scales.dispose();
    }
    this.tiles = { sources: [...weights], fwd, bwd: null };
    return this.tiles;
  }
}
