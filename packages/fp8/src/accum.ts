// Emulation of the tensor cores' limited FP8 accumulation precision (DeepSeek-V3 report, §3.3.2).
//
// The report measured that NVIDIA H800 FP8 GEMMs accumulate with ~14 bits: products are aligned to
// the largest exponent among them (and the running sum) and added as fixed-point numbers, so each
// addition drops what lies below 2^(E - 14). Without help, that costs up to ~2% relative error at
// K = 4096; DeepSeek's fix is to promote the partial sum into an FP32 accumulator every N_C = 128
// elements (one K block, where the block scales are applied anyway).
//
// Model implemented here, per output element:
//   - products p = qa * qb of the decoded FP8 values (exact in f64) arrive in groups of
//     `groupSize` (default 32, the K of one Hopper FP8 WGMMA instruction);
//   - for each group, E = floor(log2 max(|partial|, |p_1|, ..., |p_g|)); the partial sum and every
//     product are cut to multiples of 2^(E - mantissaBits) (truncated toward zero by default, or
//     rounded to nearest with `rounding: 'nearest'`) and added exactly;
//   - with `promoteEvery` = P (must divide the block size): every P elements, and at the end of every
//     K block, the partial sum is scaled by aScale * bScale (f32) and added to an f32 accumulator
//     (every operation rounded to f32, as the kernel does), then reset;
//   - without `promoteEvery` (undefined or 0): nothing is promoted; the products are scaled by
//     aScale * bScale (in f64) before entering the limited accumulator, so the whole K reduction runs
//     at limited precision (what a per-tensor-scaled FP8 GEMM on the tensor cores alone would do), and
//     the final partial sum is rounded to f32.
//
// This is slow (one scalar emulation step per product): meant for studies and tests.

export interface AccumulatorOptions {
  /** Bits kept below the leading bit of the largest addend (default 14). */
  mantissaBits?: number;
  /** Promote into f32 every this many elements (must divide the K block); undefined/0: never. */
  promoteEvery?: number;
  /** Products aligned and added together in one step (default 32). */
  groupSize?: number;
  /** How bits below the kept precision are dropped (default 'truncate', toward zero). */
  rounding?: 'truncate' | 'nearest';
}

const f64 = new Float64Array(1);
const u32 = new Uint32Array(f64.buffer);
/** Little-endian index of the high word of a double. */
const HI = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 1 : 0;

/** floor(log2 |x|) for a finite non-zero double (normal range). */
function exponentOf(x: number): number {
  f64[0] = x;
  return ((u32[HI]! >>> 20) & 0x7ff) - 1023;
}

/** A limited-precision accumulator; `add` takes a group of products. */
export class LimitedAccumulator {
  readonly mantissaBits: number;
  readonly nearest: boolean;
  sum = 0;

  constructor(mantissaBits = 14, rounding: 'truncate' | 'nearest' = 'truncate') {
    if (!Number.isInteger(mantissaBits) || mantissaBits < 1 || mantissaBits > 50) {
      throw new RangeError(`mantissaBits must be an integer in [1, 50], got ${mantissaBits}`);
    }
    this.mantissaBits = mantissaBits;
    this.nearest = rounding === 'nearest';
  }

  /** Adds products[from, to) in one aligned step. */
  add(products: Float64Array, from: number, to: number): void {
    let mx = this.sum < 0 ? -this.sum : this.sum;
    for (let i = from; i < to; i++) {
      const v = products[i]!;
      const av = v < 0 ? -v : v;
      if (av > mx) mx = av;
    }
    if (mx === 0) return;
    if (mx !== mx || mx === Infinity) {
      let s = this.sum;
      for (let i = from; i < to; i++) s += products[i]!;
      this.sum = s;
      return;
    }
    const e = exponentOf(mx) - this.mantissaBits;
    const q = 2 ** e;
    const inv = 2 ** -e;
    let total = 0;
    if (this.nearest) {
      total = quantRne(this.sum * inv);
      for (let i = from; i < to; i++) total += quantRne(products[i]! * inv);
    } else {
      total = Math.trunc(this.sum * inv);
      for (let i = from; i < to; i++) total += Math.trunc(products[i]! * inv);
    }
    this.sum = total * q;
  }
}

function quantRne(v: number): number {
  // round half to even for |v| < 2^52
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Internal entry used by fp8GemmBlockScaled when `accumulator` is set (operands already validated). */
export function fp8GemmEmulated(
  a: Uint8Array,
  aScale: Float32Array,
  b: Uint8Array,
  bScale: Float32Array,
  m: number,
  n: number,
  k: number,
  o: {
    block: number;
    bGroup?: number;
    lutA: Float32Array;
    lutB: Float32Array;
    out: Float32Array;
    accumulator: AccumulatorOptions;
  },
): void {
  const { block, lutA, lutB, out } = o;
  const opts = o.accumulator;
  const groupSize = opts.groupSize ?? 32;
  if (!Number.isInteger(groupSize) || groupSize < 1)
    throw new RangeError(`accumulator.groupSize must be a positive integer, got ${groupSize}`);
  const promote = opts.promoteEvery ?? 0;
  if (!Number.isInteger(promote) || promote < 0 || (promote > 0 && block % promote !== 0)) {
    throw new RangeError(
      `accumulator.promoteEvery must be 0/undefined (never) or divide the block size ${block}, got ${promote}`,
    );
  }
  const accum = new LimitedAccumulator(opts.mantissaBits ?? 14, opts.rounding ?? 'truncate');
  const kBlocks = Math.ceil(k / block);
  const fr = Math.fround;
  const ad = new Float64Array(k);
  const prod = new Float64Array(k);
  const step = promote > 0 ? promote : block;
  for (let i = 0; i < m; i++) {
    for (let t = 0; t < k; t++) ad[t] = lutA[a[i * k + t]!]!;
    for (let j = 0; j < n; j++) {
      const nb = (j / (o.bGroup ?? block)) | 0;
      const bo = j * k;
      for (let t = 0; t < k; t++) prod[t] = ad[t]! * lutB[b[bo + t]!]!;
      let acc = 0;
      accum.sum = 0;
      for (let kb = 0; kb < kBlocks; kb++) {
        const k0 = kb * block;
        const k1 = Math.min(k0 + block, k);
        const sA = aScale[i * kBlocks + kb]!;
        const sB = bScale[nb * kBlocks + kb]!;
        if (promote === 0) {
          const sc = sA * sB;
          for (let t = k0; t < k1; t++) prod[t] = prod[t]! * sc;
          for (let g = k0; g < k1; g += groupSize) accum.add(prod, g, Math.min(g + groupSize, k1));
        } else {
          const sc = fr(sA * sB);
          for (let p0 = k0; p0 < k1; p0 += step) {
            const p1 = Math.min(p0 + step, k1);
            accum.sum = 0;
            for (let g = p0; g < p1; g += groupSize) accum.add(prod, g, Math.min(g + groupSize, p1));
            acc = fr(acc + fr(fr(accum.sum) * sc));
          }
        }
      }
      out[i * n + j] = promote === 0 ? accum.sum : acc;
    }
  }
}
