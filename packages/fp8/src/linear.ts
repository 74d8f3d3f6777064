// FP8Linear: a Linear layer whose three GEMMs run in FP8 E4M3 with DeepSeek-V3's fine-grained
// online scaling (report §3.3), wired into @dsv3/core's autograd with a custom backward.
//
// y = x W^T (+ b), x [..., in] flattened to X [M, in], W [out, in] (f32 master weight), dY [M, out].
//
//   GEMM    computes            FP8 operand a (1 x 128 scales)         FP8 operand b (NT)                        bScale
//   Fprop   Y  = X · W^T        X  [M, in]:  1x128 tiles along in      W   [out, in]: 128x128 blocks             block
//   Dgrad   dX = dY · W         dY [M, out]: 1x128 tiles along out     W^T [in, out]: the same 128x128 blocks,   block
//                                                                      transposed (bytes and scale grid)
//   Wgrad   dW = dY^T · X       dY^T [out, M]: 128x1 tiles of dY       X^T [in, M]: 128x1 tiles of X             row
//                               along the tokens (quantizeActT)        along the tokens (quantizeActT)
//
// - Every GEMM is fp8GemmBlockScaledT: per 128-wide block of the contraction axis the product is
//   accumulated and promoted with both scales into an f32 result. Outputs and gradients are f32.
// - The weight is quantized once per weight version (cached on the Parameter's tensor; the optimizer
//   replaces that tensor on every step) and its transpose for Dgrad is the transpose of the same
//   bytes and scales: a 128x128 tile of W^T is the transposed tile of W, and quantizing W^T directly
//   gives bit-identical bytes and scales.
// - Wgrad contracts over tokens, so both operands need scales along the token axis: dY and X are
//   quantized in 128 x 1 tiles (one scale per channel and 128 tokens). X is not kept in f32 for the
//   backward: as in the report, the FP8 copy made for Fprop (1x128) is cached and re-quantized from
//   1x128 to 128x1 tiles (dequantize, quantize columnwise) — `saveInput: 'f32'` keeps the f32 input
//   instead (one rounding less, 4x the memory).
// - Activation gradients use 1x128 tiles (never 128x128 blocks: block-wise quantization of
//   activation gradients made DeepSeek's 16B MoE run diverge).
//
// W8A8 inference: FP8Linear.fromCheckpoint(weight fp8 [out, in], weight_scale_inv f32
// [ceil(out/128), ceil(in/128)]) keeps the weight in FP8 (state dict names `weight`,
// `weight_scale_inv`, as DeepSeek-V3 checkpoints) and quantizes activations online; a backward
// through it gives dX (Dgrad with the FP8 weight) and no weight gradient.
import {
  Module,
  type Parameter,
  Rng,
  Tensor,
  add,
  cast,
  full,
  noGrad,
  record,
  tensor,
  transpose,
  type InitOptions,
} from '@dsv3/core';
import type { ScaleFormat } from './quant';
import {
  dequantizeActivationT,
  fp8GemmBlockScaledT,
  quantizeActivationT,
  quantizeActivationTransposedT,
  quantizeWeightT,
  type QuantizedTensor,
} from './tensor/ops';

export interface FP8LinearOptions extends InitOptions {
  bias?: boolean;
  /** Quantization block (default 128). */
  block?: number;
  /** Scale format of activations and gradients (default 'fp32'; 'ue8m0' = power-of-two scales). */
  scaleFormat?: ScaleFormat;
  /** What the backward keeps of x for Wgrad: 'fp8' (default, the report's recipe) or 'f32'. */
  saveInput?: 'fp8' | 'f32';
  /** CPU: run the exact reference GEMM kernel instead of the fast sgemm path (slow; for tests). */
  exactGemm?: boolean;
}

export interface FromCheckpointOptions {
  /** Optional bias [out] (f32), trainable. */
  bias?: Tensor | null;
  block?: number;
  scaleFormat?: ScaleFormat;
  exactGemm?: boolean;
}

interface WeightCache {
  source: Tensor;
  fwd: QuantizedTensor;
  /** the transposed tiles for Dgrad, made on first use */
  bwd: QuantizedTensor | null;
}

const fmt = (s: readonly number[]): string => `[${s.join(', ')}]`;

/** A view of t with another shape (same storage, no autograd). */
function view(t: Tensor, shape: number[]): Tensor {
  return new Tensor(t.backend, t.storage, shape, t.dtype);
}

export class FP8Linear extends Module {
  /** f32 master weight [out, in] (null for a W8A8 layer made by fromCheckpoint). */
  readonly weight: Parameter | null;
  readonly bias: Parameter | null;
  /** 'train': f32 master weight, all three GEMMs in FP8; 'w8a8': FP8 weight from a checkpoint. */
  readonly mode: 'train' | 'w8a8';
  readonly block: number;
  readonly scaleFormat: ScaleFormat;
  readonly saveInput: 'fp8' | 'f32';
  private readonly exactGemm: boolean;
  private cache: WeightCache | null = null;

  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: FP8LinearOptions = {},
    /** @internal used by fromCheckpoint */
    fp8?: { q: Tensor; scales: Tensor; bias: Tensor | null },
  ) {
    super();
    for (const [name, v] of [
      ['inFeatures', inFeatures],
      ['outFeatures', outFeatures],
    ] as const) {
      if (!Number.isInteger(v) || v < 1)
        throw new RangeError(`FP8Linear: ${name} must be a positive integer, got ${v}`);
    }
    this.block = opts.block ?? 128;
    if (!Number.isInteger(this.block) || this.block < 1)
      throw new RangeError(`FP8Linear: block must be a positive integer, got ${opts.block}`);
    this.scaleFormat = opts.scaleFormat ?? 'fp32';
    this.saveInput = opts.saveInput ?? 'fp8';
    if (this.saveInput !== 'fp8' && this.saveInput !== 'f32')
      throw new RangeError(`FP8Linear: saveInput must be 'fp8' or 'f32', got ${JSON.stringify(opts.saveInput)}`);
    this.exactGemm = opts.exactGemm ?? false;
    if (fp8) {
      this.mode = 'w8a8';
      this.weight = null;
      this.buffer('weight', fp8.q);
      this.buffer('weight_scale_inv', fp8.scales);
      this.bias = fp8.bias ? this.param('bias', fp8.bias) : null;
      return;
    }
    this.mode = 'train';
    if (opts.dtype !== undefined && opts.dtype !== 'f32')
      throw new TypeError(`FP8Linear keeps an f32 master weight; dtype ${opts.dtype} is not supported`);
    const rng = opts.rng ?? new Rng(opts.seed ?? 0);
    const std = opts.std ?? 1 / Math.sqrt(inFeatures);
    const w = rng.fillNormal(new Float64Array(inFeatures * outFeatures), 0, std);
    this.weight = this.param(
      'weight',
      tensor(w, { shape: [outFeatures, inFeatures], dtype: 'f32', backend: opts.backend }),
    );
    this.bias = opts.bias ? this.param('bias', full([outFeatures], 0, { dtype: 'f32', backend: opts.backend })) : null;
  }

  /**
   * A W8A8 layer from a checkpoint's FP8 weight: `weight` fp8-e4m3 [out, in] and
   * `weight_scale_inv` f32 [ceil(out/128), ceil(in/128)] (bf16/f16 scales are cast to f32).
   */
  static fromCheckpoint(weightFp8: Tensor, scaleInv: Tensor, opts: FromCheckpointOptions = {}): FP8Linear {
    if (!(weightFp8 instanceof Tensor) || !(scaleInv instanceof Tensor))
      throw new TypeError('FP8Linear.fromCheckpoint: weight and scale must be Tensors');
    if (weightFp8.dtype !== 'fp8-e4m3')
      throw new TypeError(`FP8Linear.fromCheckpoint: weight must be fp8-e4m3, got ${weightFp8.dtype}`);
    if (weightFp8.ndim !== 2)
      throw new RangeError(`FP8Linear.fromCheckpoint: weight must be 2-D [out, in], got ${fmt(weightFp8.shape)}`);
    const block = opts.block ?? 128;
    const [out, inF] = [weightFp8.shape[0]!, weightFp8.shape[1]!];
    const want = [Math.ceil(out / block), Math.ceil(inF / block)];
    if (scaleInv.ndim !== 2 || scaleInv.shape[0] !== want[0] || scaleInv.shape[1] !== want[1]) {
      throw new RangeError(
        `FP8Linear.fromCheckpoint: weight_scale_inv has shape ${fmt(scaleInv.shape)}, expected ${fmt(want)} for weight ${fmt(weightFp8.shape)} (${block}x${block} blocks)`,
      );
    }
    let s = scaleInv;
    if (s.dtype === 'bf16' || s.dtype === 'f16' || s.dtype === 'f64') s = noGrad(() => cast(scaleInv, 'f32'));
    else if (s.dtype !== 'f32')
      throw new TypeError(`FP8Linear.fromCheckpoint: weight_scale_inv must be a float tensor, got ${s.dtype}`);
    if (s.backend !== weightFp8.backend)
      throw new Error('FP8Linear.fromCheckpoint: weight and weight_scale_inv live on different backends');
    const bias = opts.bias ?? null;
    if (bias && (bias.ndim !== 1 || bias.shape[0] !== out || bias.dtype !== 'f32')) {
      throw new RangeError(`FP8Linear.fromCheckpoint: bias must be f32 [${out}], got ${bias.dtype} ${fmt(bias.shape)}`);
    }
    return new FP8Linear(
      inF,
      out,
      { block, scaleFormat: opts.scaleFormat, exactGemm: opts.exactGemm },
      { q: weightFp8.detach(), scales: s.detach(), bias: bias?.detach() ?? null },
    );
  }

  /** The FP8 weight and its 128x128 scales as Fprop uses them (cached per weight version). */
  quantizedWeight(): QuantizedTensor {
    return this.weightCache().fwd;
  }

  /** The FP8 weight as a checkpoint stores it: { weight, weight_scale_inv }. */
  toCheckpoint(): { weight: Tensor; weight_scale_inv: Tensor } {
    const { q, scales } = this.quantizedWeight();
    return { weight: q, weight_scale_inv: scales };
  }

  private weightCache(): WeightCache {
    const source = this.mode === 'train' ? this.weight!.value : this.getBuffer('weight');
    if (this.cache?.source === source) return this.cache;
    const fwd = noGrad(() =>
      this.mode === 'train'
        ? quantizeWeightT(source, { block: this.block })
        : { q: source, scales: this.getBuffer('weight_scale_inv') },
    );
    this.cache = { source, fwd, bwd: null };
    return this.cache;
  }

  private transposedWeight(c: WeightCache): QuantizedTensor {
    c.bwd ??= noGrad(() => ({ q: transpose(c.fwd.q), scales: transpose(c.fwd.scales) }));
    return c.bwd;
  }

  forward(x: Tensor): Tensor {
    if (!(x instanceof Tensor)) throw new TypeError('FP8Linear.forward: expected a Tensor');
    if (x.ndim < 1 || x.shape[x.ndim - 1] !== this.inFeatures) {
      throw new RangeError(`FP8Linear.forward: input ${fmt(x.shape)} does not end in inFeatures = ${this.inFeatures}`);
    }
    if (x.dtype !== 'f32' && x.dtype !== 'bf16' && x.dtype !== 'f16')
      throw new TypeError(`FP8Linear.forward: expected an f32 (or bf16/f16) input, got ${x.dtype}`);
    const lead = x.shape.slice(0, -1);
    const m = lead.reduce((p, d) => p * d, 1);
    const [k, n] = [this.inFeatures, this.outFeatures];
    const qo = { block: this.block, scaleFormat: this.scaleFormat };
    const gemmOpts = { block: this.block, exact: this.exactGemm };
    const wc = this.weightCache();
    const W = this.mode === 'train' ? this.weight!.value : null;

    const { y2, xq, x2 } = noGrad(() => {
      const x2 = x.dtype === 'f32' ? view(x, [m, k]) : cast(view(x, [m, k]), 'f32');
      const xq = quantizeActivationT(x2, qo);
      const y2 = fp8GemmBlockScaledT(xq.q, xq.scales, wc.fwd.q, wc.fwd.scales, gemmOpts);
      return { y2, xq, x2 };
    });
    const savedX = this.saveInput === 'f32' ? x2 : null;
    // a cast copy of x that the backward does not keep can go now (device memory)
    if (!savedX && x2.storage !== x.storage) x2.dispose();
    const y = view(y2, [...lead, n]);
    const inputs = W ? [x, W] : [x];
    record(y, 'fp8Linear', inputs, (g) => {
      const g2 = g.dtype === 'f32' ? view(g, [m, n]) : cast(view(g, [m, n]), 'f32');
      const temps: Tensor[] = g2.storage !== g.storage ? [g2] : [];
      let dx: Tensor | null = null;
      let dw: Tensor | null = null;
      if (x.requiresGrad) {
        // Dgrad: dY (1x128 along out) · W (128x128 blocks, transposed)
        const gq = quantizeActivationT(g2, qo);
        const wt = this.transposedWeight(wc);
        const d = fp8GemmBlockScaledT(gq.q, gq.scales, wt.q, wt.scales, gemmOpts);
        temps.push(gq.q, gq.scales);
        dx = view(d, [...x.shape]);
        if (x.dtype !== 'f32') {
          dx = cast(dx, x.dtype);
          temps.push(d);
        }
      }
      if (W?.requiresGrad) {
        // Wgrad: dY^T (128x1 along tokens) · X (128x1 along tokens, re-quantized from the cached 1x128 FP8)
        const gT = quantizeActivationTransposedT(g2, qo);
        const xs = savedX ?? dequantizeActivationT(xq.q, xq.scales, { block: this.block });
        const xT = quantizeActivationTransposedT(xs, qo);
        dw = fp8GemmBlockScaledT(gT.q, gT.scales, xT.q, xT.scales, { ...gemmOpts, bScaleLayout: 'row' });
        temps.push(gT.q, gT.scales, xT.q, xT.scales);
        if (!savedX) temps.push(xs);
      }
      // Temporaries are released at once (on WebGPU, after the work already recorded that reads them).
      for (const t of temps) t.dispose();
      return W ? [dx, dw] : [dx];
    });
    return this.bias ? add(y, this.bias.value) : y;
  }
}
