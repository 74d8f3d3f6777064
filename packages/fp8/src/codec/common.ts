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
