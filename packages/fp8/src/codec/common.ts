// Shared pieces of the FP8 codecs.

/**
 * What happens to values whose magnitude rounds above a format's largest finite value.
 *
 * - `saturate: true` (the default, "saturate to finite"): every such value, ±Infinity included,
 *   becomes ±max (448 for E4M3, 57344 for E5M2). This is what DeepSeek's kernels get from the
 *   hardware conversion (`cvt.rn.satfinite`), and what a quantizer wants.
 * - `saturate: false`: torch's `x.to(torch.float8_e4m3fn / float8_e5m2)`. Rounding happens first
 *   (to nearest, ties to even, as if the exponent range were unbounded); a result above max is then
 *   NaN for E4M3 (0x7f / 0xff: the format has no infinity) and ±Infinity for E5M2. For E4M3 that
 *   means |x| <= 464 (the midpoint of 448 and the non-existent 480, a tie that goes to the even 448)
 *   gives ±448 and |x| > 464 gives NaN; ±Infinity gives NaN.
 *
 * NaN inputs always give NaN (E4M3 0x7f, E5M2 0x7f, as torch; the sign bit of the input NaN is kept), in
 * both modes.
 */
export interface EncodeOptions {
  saturate?: boolean;
}

export type Fp8Format = 'e4m3' | 'e5m2';

/** Shared scratch for bit views of a single value. */
export const f32Scratch = new Float32Array(1);
export const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** 2^52: adding then subtracting it rounds a double in [0, 2^52) to an integer, ties to even. */
export const RNE_MAGIC = 4503599627370496;

/** A Uint32Array aliasing the bits of a Float32Array (copying if it is not 4-byte aligned). */
export function bitsView(x: Float32Array): Uint32Array {
  if (x.byteOffset % 4 === 0) return new Uint32Array(x.buffer, x.byteOffset, x.length);
  const copy = x.slice();
  return new Uint32Array(copy.buffer, 0, copy.length);
}

/** Accepts any array-like of numbers and returns a Float32Array (no copy if it already is one). */
export function asFloat32(x: ArrayLike<number>): Float32Array {
  return x instanceof Float32Array ? x : Float32Array.from(x);
}

/**
 * An FP8 format as the shared codec needs it. Codes are the 7 magnitude bits; the sign is bit 7.
 * `hasInf`: the all-ones exponent holds ±Infinity and NaNs (E5M2, IEEE-style); otherwise only the
 * all-ones code is NaN (E4M3 "fn").
 */
export interface Fp8Spec {
  name: string;
  expBits: number;
  manBits: number;
  bias: number;
  hasInf: boolean;
  /** Largest finite code. */
  maxCode: number;
  nanCode: number;
  /** Code of an overflow with saturate:false (NaN without infinities, else Infinity). */
  overflowCode: number;
}

/** The rounding constants of a format, derived once from its Fp8Spec. */
export interface Fp8Codec extends Fp8Spec {
  /** 23 - manBits: f32 mantissa bits dropped. */
  shift: number;
  /** (127 - bias) << manBits: subtracting it rebiases a shifted f32 exponent. */
  rebias: number;
  /** f32 bits of the smallest normal: below it a value encodes as a subnormal. */
  minNormalBits: number;
  /** f32 bits of the smallest magnitude that rounds above max. */
  overflowBits: number;
  /** 1 / (smallest subnormal): |x| times it is the subnormal code before rounding. */
  subnormalScale: number;
  lut: Float32Array;
}

export function makeCodec(spec: Fp8Spec): Fp8Codec {
  const shift = 23 - spec.manBits;
  const rebias = (127 - spec.bias) << spec.manBits;
  const half = 1 << (shift - 1);
  // The midpoint above max rounds to max when max's mantissa is even (ties to even), else past it.
  const overflowBits = ((spec.maxCode + rebias) << shift) + half + (spec.maxCode & 1 ? 0 : 1);
  const c: Fp8Codec = {
    ...spec,
    shift,
    rebias,
    minNormalBits: (128 - spec.bias) << 23,
    overflowBits,
    subnormalScale: 2 ** (spec.bias - 1 + spec.manBits),
    lut: new Float32Array(256),
  };
  for (let b = 0; b < 256; b++) c.lut[b] = decodeScalar(c, b);
  return c;
}

function decodeScalar(f: Fp8Spec, b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const eMax = (1 << f.expBits) - 1;
  const mMask = (1 << f.manBits) - 1;
  const e = (b >> f.manBits) & eMax;
  const m = b & mMask;
  if (e === eMax && f.hasInf) return m === 0 ? sign * Infinity : NaN;
  if (e === eMax && m === mMask) return NaN;
  if (e === 0) return sign * m * 2 ** (1 - f.bias - f.manBits);
  return sign * (1 + m / (1 << f.manBits)) * 2 ** (e - f.bias);
}

/** Subnormal range: the code is |x| / (smallest subnormal), rounded to an integer, ties to even. */
export function encodeSubnormal(a: number, scale: number): number {
  f32Scratch[0] = 0;
  u32Scratch[0] = a;
  const v = f32Scratch[0]! * scale; // exact: a power-of-two scaling
  // The smallest normal's code is 1 << manBits, so rounding up into the normal range needs no special case.
  return v + RNE_MAGIC - RNE_MAGIC;
}

/** Encodes one number to an FP8 byte; `saturate` as in EncodeOptions (resolved by the caller, so its opts object needs no allocation). */
export function encodeScalar(f: Fp8Codec, x: number, saturate: boolean): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  const sign = (u >>> 24) & 0x80;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | f.nanCode;
  if (a >= f.overflowBits) return sign | (saturate ? f.maxCode : f.overflowCode);
  if (a < f.minNormalBits) return sign | encodeSubnormal(a, f.subnormalScale);
  const shift = f.shift;
  return sign | (((a + ((1 << (shift - 1)) - 1) + ((a >>> shift) & 1)) >>> shift) - f.rebias);
}

/** Checks encode*Array's `out` and returns the f32 bits of `x`. */
export function encodeArrayInput(f: Fp8Spec, x: ArrayLike<number>, out: Uint8Array): Uint32Array {
  if (out.length < x.length)
    throw new RangeError(`encode${f.name}Array: out has ${out.length} elements, need ${x.length}`);
  return bitsView(asFloat32(x));
}

/** Decodes FP8 bytes to a Float32Array through the format's 256-entry table. */
export function decodeArray(f: Fp8Codec, q: Uint8Array, out: Float32Array): Float32Array {
  if (out.length < q.length)
    throw new RangeError(`decode${f.name}Array: out has ${out.length} elements, need ${q.length}`);
  const lut = f.lut;
  for (let i = 0; i < q.length; i++) out[i] = lut[q[i]!]!;
  return out;
}
