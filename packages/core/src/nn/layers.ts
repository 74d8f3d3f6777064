// Basic layers: Linear, Embedding, RMSNorm and the SwiGLU MLP used by DeepSeek's dense layers and experts.
import { Rng } from '../rng.js';
import { tensor, full } from '../ops/creation.js';
import { embedding as embed } from '../ops/indexing.js';
import { cast } from '../ops/elementwise.js';
import type { DType } from '../dtype.js';
import { linear } from '../ops/linalg.js';
import { rmsNorm } from '../ops/nn.js';
import { mul, silu } from '../ops/elementwise.js';
import { Tensor } from '../tensor.js';
import { CpuStorage } from '../cpu/backend.js';
import { argmaxProduct, weightProduct, weightProducts } from '../cpu/gemm/index.js';
import { siluInto } from '../cpu/gated-simd.js';
import { takeF32 } from '../cpu/pool.js';
import { mulInto } from '../cpu/train-kernels.js';
import { F32WorkArrays, MLP_WORK_BYTES } from '../cpu/work-arrays.js';
import { isGradEnabled } from '../autograd.js';
import { Module, type ModuleOptions, type Parameter } from './module.js';

/** FP8 storage of a Linear's weight: E4M3 bytes [out, in] resident on the CPU, f32 128x128 block scales. */
export interface Fp8LinearWeight {
  w: Tensor;
  scales: Float32Array;
}

/** A Linear's weight as the CPU's weight products read it (f32 values, bf16 bits, or E4M3 bytes + scales). */
export interface WeightOperand {
  w: Float32Array | Uint16Array | Uint8Array;
  scales?: Float32Array;
}

/** y = x Wᵀ with W in FP8 (inference only: no gradient flows through it). */
function fp8Linear(x: Tensor, { w, scales }: Fp8LinearWeight): Tensor {
  const [n, k] = w.shape as [number, number];
  if (x.dtype !== 'f32' || x.shape.at(-1) !== k || x.backend !== w.backend)
    throw new TypeError(
      `FP8 Linear [${n}, ${k}]: input must be f32 [..., ${k}] on ${w.backend.name}, got ${x.dtype} [${x.shape.join(', ')}] on ${x.backend.name}`,
    );
  const rows = x.size / k;
  // a kernel output (the product writes every row): in the engine's memory for a prefill, released with
  // the step's other dead outputs, instead of fresh zeroed host memory (1.5 MB a 512-token q_b)
  const y = takeF32(rows * n);
  const xs = (x.storage as CpuStorage).data as Float32Array;
  weightProduct({ m: rows, n, k, x: xs, w: (w.storage as CpuStorage).data as Uint8Array, scales, y });
  return new Tensor(w.backend, new CpuStorage(y), [...x.shape.slice(0, -1), n], 'f32');
}

export interface InitOptions extends ModuleOptions {
  /** Weight init std (DeepSeek-V3 uses 0.006); default 1/sqrt(fan_in). */
  std?: number;
  rng?: Rng;
  seed?: number;
}

/** Zeros never written, shared by every parameter of an Rng that draws nothing (see normal). */
let zeroSource = new Float32Array(0);

function normal(shape: number[], std: number, o: InitOptions): Tensor {
  const rng = o.rng ?? new Rng(o.seed ?? 0);
  const size = shape.reduce((a, b) => a * b, 1);
  const dtype = o.dtype ?? 'f32';
  // A loader's skeleton: the upload copies these zeros or stands a lazily mapped placeholder in for
  // them. One shared source, not a fresh array per parameter: malloc hands back heap memory freed by
  // the last one, zero-filled page by page (~1.3 s of faults in V3-mini's load).
  if (rng.drawsNothing) {
    if (zeroSource.length < size) zeroSource = new Float32Array(size);
    return tensor(zeroSource.subarray(0, size), { shape, dtype, backend: o.backend });
  }
  // f32 parameters are drawn straight into f32 storage: each draw is rounded once, as drawing into
  // f64 and casting would (same values), without an f64 buffer twice the parameter's size. Narrower
  // dtypes round from the f64 draw, as before (no double rounding through f32).
  const v = rng.fillNormal(dtype === 'f32' ? new Float32Array(size) : new Float64Array(size), 0, std);
  return tensor(v, { shape, dtype, backend: o.backend });
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
  /**
   * Inference-only FP8 storage set by a loader: forward then runs the FP8 weight product on it (no
   * gradient; `weight` is not read).
   */
  fp8: Fp8LinearWeight | null = null;
  forward(x: Tensor): Tensor {
    return this.fp8 ? fp8Linear(x, this.fp8) : linear(x, this.weight.value, this.bias?.value);
  }
  /**
   * The first index of the largest value of each row of forward(x) (NaN never wins; -1 for a row with
   * nothing above -∞), without forward's output where the CPU can skip it (core's argmaxProduct: a bf16
   * head screened by its 8-bit copy for one row); null where this Linear is not a CPU weight product
   * (another backend, a bias, a replaced forward) or x is not f32: the caller argmaxes forward(x) itself.
   */
  argmaxRows(x: Tensor): Int32Array | null {
    const op = this.cpuWeightOperand();
    const k = this.inFeatures;
    if (!op || x.dtype !== 'f32' || x.backend.name !== 'cpu' || x.shape.at(-1) !== k) return null;
    const xs = (x.storage as CpuStorage).data as Float32Array;
    const product = { m: x.size / k, n: this.outFeatures, k, x: xs, w: op.w, scales: op.scales };
    return argmaxProduct(product, this.screenArgmax);
  }
  /**
   * Lets argmaxRows screen this weight (core's argmaxProduct: an 8-bit copy of a bf16 weight, packed at the
   * first call and kept): for inference, where the weight never changes in place afterwards (a new value
   * is a new array, packed again; an optimizer step on the same array would leave the copy stale). An
   * inference loader sets it on the LM head.
   */
  screenArgmax = false;
  /**
   * The weight as the CPU's weight products read it, for callers that batch several products into one
   * job (weightProducts); null unless this is a bias-free Linear on the CPU with f32 / bf16 / FP8 storage
   * whose forward has not been replaced.
   */
  cpuWeightOperand(): WeightOperand | null {
    if (this.forward !== Linear.prototype.forward || this.bias) return null;
    if (this.fp8) return { w: (this.fp8.w.storage as CpuStorage).data as Uint8Array, scales: this.fp8.scales };
    const v = this.weight.value;
    if (v.backend.name !== 'cpu' || !(v.dtype === 'f32' || v.dtype === 'bf16')) return null;
    return { w: (v.storage as CpuStorage).data as Float32Array | Uint16Array };
  }
}

export class Embedding extends Module {
  readonly weight: Parameter;
  /** The dtype forward's rows come out in, whatever the table's storage (default: the table's dtype). */
  readonly outDtype: DType | undefined;
  constructor(
    readonly numEmbeddings: number,
    readonly dim: number,
    opts: InitOptions & { outDtype?: DType } = {},
  ) {
    super();
    this.weight = this.param('weight', normal([numEmbeddings, dim], opts.std ?? 1, opts));
    this.outDtype = opts.outDtype;
  }
  forward(ids: Tensor): Tensor {
    const rows = embed(ids, this.weight.value);
    // a table stored narrower than the activations (a loaded bf16 checkpoint's): widen the rows only
    return this.outDtype === undefined || rows.dtype === this.outDtype ? rows : cast(rows, this.outDtype);
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
// The gate / up activations: kept between calls in the GEMM engine's memory, where the weight products
// write them and read g back in place (no copy out; the weight GEMM stages no g). Decode's one row takes
// them too: a fresh pair only there left the prefill's branch without type feedback, and the request's
// first prefill deoptimized this function (docs/benchmarks.md, issue 13, nineteenth session).
const swigluRows = new F32WorkArrays(true);

/** Fewest rows a part of a SwiGLU's prefill gets: past every product route's row threshold (GEMV, i16). */
const SWIGLU_PART_ROWS = 64;

/**
 * How many parts of rows a SwiGLU over m rows runs in: enough that each part's gate and up rows (8 bytes a
 * row and hidden unit) fit MLP_WORK_BYTES, each at least SWIGLU_PART_ROWS rows, so every part's products
 * take the route the whole's would (the route depends on the row count only below that) and give its bits.
 */
export function swigluParts(m: number, hidden: number): number {
  return Math.max(1, Math.min(Math.floor(m / SWIGLU_PART_ROWS), Math.ceil((8 * m * hidden) / MLP_WORK_BYTES)));
}

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
    return this.cpuInference(x) ?? this.downProj.forward(mul(silu(this.gateProj.forward(x)), this.upProj.forward(x)));
  }

  /**
   * Inference on the CPU (no gradient, f32 x, plain CPU weights): gate and up as one weight-product job
   * (x staged once, one hand-out to the worker threads), silu(g)·u, then down — exactly what the op
   * composition computes (silu rounded to f32, then the product); null where that path does not apply.
   * A long prefill runs in parts of rows (swigluParts) so the gate and up rows stay within MLP_WORK_BYTES.
   */
  private cpuInference(x: Tensor): Tensor | null {
    if (isGradEnabled() || x.backend.name !== 'cpu' || x.dtype !== 'f32' || x.shape.at(-1) !== this.dim) return null;
    const gate = this.gateProj.cpuWeightOperand();
    const up = this.upProj.cpuWeightOperand();
    const down = this.downProj.cpuWeightOperand();
    if (!gate || !up || !down) return null;
    const m = x.size / this.dim;
    const xs = (x.storage as CpuStorage).data as Float32Array;
    const y = takeF32(m * this.dim); // a kernel output (no fresh zeroed 2 MB a 512-token prefill)
    const parts = swigluParts(m, this.hidden);
    const most = Math.ceil(m / parts);
    const g0 = swigluRows.take(0, most * this.hidden),
      u0 = swigluRows.take(1, most * this.hidden);
    for (let i = 0; i < parts; i++) {
      const r0 = Math.floor((i * m) / parts),
        r1 = Math.floor(((i + 1) * m) / parts);
      const rows = r1 - r0;
      const g = g0.subarray(0, rows * this.hidden),
        u = u0.subarray(0, rows * this.hidden);
      const shape = { m: rows, n: this.hidden, k: this.dim, x: xs.subarray(r0 * this.dim, r1 * this.dim) };
      weightProducts([
        { ...shape, ...gate, y: g },
        { ...shape, ...up, y: u },
      ]);
      siluInto(g, g); // the silu op's f32 kernel: rounded to f32 as the op's output is
      mulInto(g, u); // the mul op's f32 products, on the engine's threads for a prefill's resident rows
      weightProduct({
        m: rows,
        n: this.dim,
        k: this.hidden,
        x: g,
        ...down,
        y: y.subarray(r0 * this.dim, r1 * this.dim),
      });
    }
    swigluRows.release();
    return new Tensor(x.backend, new CpuStorage(y), x.shape, 'f32');
  }
}
