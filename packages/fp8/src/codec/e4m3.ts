// FP8 E4M3 ("e4m3fn", the format of torch.float8_e4m3fn and of DeepSeek-V3's FP8 tensors).
//
// Layout S.EEEE.MMM, exponent bias 7, no infinities, NaN = S.1111.111 (0x7f / 0xff).
//   normal    (E = 1..15):  (-1)^S * 2^(E-7) * (1 + M/8)      largest: S.1111.110 = 448
//   subnormal (E = 0):      (-1)^S * 2^-6  * (M/8)            smallest: 2^-9
// 254 finite values (both zeros included) + 2 NaN codes.
//
// Encoding rounds to nearest, ties to even, on the bits of the f32 input (no logarithms):
// f64 inputs are first rounded to f32 (Float32Array storage), as torch does for f32 tensors.
// Overflow policy: see EncodeOptions (saturate to ±448 by default; torch's NaN with saturate:false).
import { RNE_MAGIC, asFloat32, bitsView, f32Scratch, u32Scratch } from './common';
import type { EncodeOptions } from './common';

export const E4M3_MAX = 448;
export const E4M3_MIN_NORMAL = 2 ** -6;
export const E4M3_MIN_SUBNORMAL = 2 ** -9;
/** The canonical NaN byte (positive sign). */
export const E4M3_NAN = 0x7f;
/** The byte of +448. */
export const E4M3_MAX_CODE = 0x7e;

function decodeE4M3Scalar(b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 0xf;
  const m = b & 0x7;
  if (e === 0xf && m === 0x7) return NaN;
  if (e === 0) return sign * m * 2 ** -9;
  return sign * (1 + m / 8) * 2 ** (e - 7);
}

/** Value of every E4M3 byte (NaN for 0x7f and 0xff). All values are exact in f32. */
export const E4M3_LUT: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) t[b] = decodeE4M3Scalar(b);
  return t;
})();

/** f32 bits of 2^-6: at or above it a value is encoded as an E4M3 normal. */
const MIN_NORMAL_BITS = 0x3c800000;
/** f32 bits of 464 (the rounding midpoint above 448): values at or below it round to at most 448. */
const OVERFLOW_BITS = 0x43e80000;

/**
 * Encodes |x| (given as the 31 low bits of its f32 representation, NaN excluded) to the 7 low
 * bits of an E4M3 code, or 0x80 to flag "rounds above 448".
 */
function encodeMagnitude(a: number): number {
  if (a >= MIN_NORMAL_BITS) {
    if (a > OVERFLOW_BITS) return 0x80;
    // Round the 23-bit f32 mantissa to 3 bits, ties to even; a carry out of the mantissa bumps the
    // exponent, which is exactly right. Then rebias the exponent from 127 to 7 (120 << 3 = 960).
    return ((a + 0x7ffff + ((a >>> 20) & 1)) >>> 20) - 960;
  }
  // Subnormal range: the code is |x| / 2^-9 rounded to an integer (ties to even); 8 is the code of
  // 2^-6 (E=1, M=0), so rounding up into the normal range needs no special case.
  f32Scratch[0] = 0;
  u32Scratch[0] = a;
  const v = f32Scratch[0]! * 512; // exact: a power-of-two scaling
  return v + RNE_MAGIC - RNE_MAGIC;
}

/** Encodes one number to an E4M3 byte (see EncodeOptions for the overflow policy). */
export function encodeE4M3(x: number, opts: EncodeOptions = {}): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  const sign = (u >>> 24) & 0x80;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | E4M3_NAN;
  const c = encodeMagnitude(a);
  if (c === 0x80) return sign | (opts.saturate === false ? E4M3_NAN : E4M3_MAX_CODE);
  return sign | c;
}

/** Decodes one E4M3 byte. */
export function decodeE4M3(b: number): number {
  return E4M3_LUT[b & 0xff]!;
}

/**
 * Encodes a Float32Array (or any array of numbers, rounded to f32 first) into E4M3 bytes.
 * `out` may be supplied to avoid an allocation.
 */
export function encodeE4M3Array(
  x: ArrayLike<number>,
  opts: EncodeOptions = {},
  out: Uint8Array = new Uint8Array(x.length),
): Uint8Array {
  if (out.length < x.length) throw new RangeError(`encodeE4M3Array: out has ${out.length} elements, need ${x.length}`);
  const bits = bitsView(asFloat32(x));
  const overflow = opts.saturate === false ? E4M3_NAN : E4M3_MAX_CODE;
  const n = bits.length;
  for (let i = 0; i < n; i++) {
    const u = bits[i]!;
    const sign = (u >>> 24) & 0x80;
    const a = u & 0x7fffffff;
    let c: number;
    if (a >= MIN_NORMAL_BITS) {
      if (a > OVERFLOW_BITS) c = a > 0x7f800000 ? E4M3_NAN : overflow;
      else c = ((a + 0x7ffff + ((a >>> 20) & 1)) >>> 20) - 960;
    } else {
      c = encodeMagnitude(a);
    }
    out[i] = sign | c;
  }
  return out;
}

/** Decodes E4M3 bytes to a Float32Array through the 256-entry table. */
export function decodeE4M3Array(q: Uint8Array, out: Float32Array = new Float32Array(q.length)): Float32Array {
  if (out.length < q.length) throw new RangeError(`decodeE4M3Array: out has ${out.length} elements, need ${q.length}`);
  const lut = E4M3_LUT;
  for (let i = 0; i < q.length; i++) out[i] = lut[q[i]!]!;
  return out;
}
