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
import { decodeArray, encodeArrayInput, encodeScalar, encodeSubnormal, makeCodec } from './common';
import type { EncodeOptions } from './common';

export const E4M3_MAX = 448;
export const E4M3_MIN_NORMAL = 2 ** -6;
export const E4M3_MIN_SUBNORMAL = 2 ** -9;
/** The canonical NaN byte (positive sign). */
export const E4M3_NAN = 0x7f;
/** The byte of +448. */
export const E4M3_MAX_CODE = 0x7e;

// No infinities: overflow with saturate:false is NaN. Overflow starts above 464, the midpoint of
// 448 and the non-existent 480 (the tie goes to the even 448).
const E4M3 = makeCodec({
  name: 'E4M3',
  expBits: 4,
  manBits: 3,
  bias: 7,
  hasInf: false,
  maxCode: E4M3_MAX_CODE,
  nanCode: E4M3_NAN,
  overflowCode: E4M3_NAN,
});

/** Value of every E4M3 byte (NaN for 0x7f and 0xff). All values are exact in f32. */
export const E4M3_LUT: Float32Array = E4M3.lut;

// The hot loop of encodeE4M3Array reads these as plain constants, which keeps it at full speed
// (a loop shared by both formats ran measurably slower in bench/run.ts).
const MIN_NORMAL_BITS = E4M3.minNormalBits;
const OVERFLOW_BITS = E4M3.overflowBits;
const SUBNORMAL_SCALE = E4M3.subnormalScale;

/** Encodes one number to an E4M3 byte (see EncodeOptions for the overflow policy). */
export function encodeE4M3(x: number, opts: EncodeOptions = {}): number {
  return encodeScalar(E4M3, x, opts.saturate !== false);
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
  const bits = encodeArrayInput(E4M3, x, out);
  const overflow = opts.saturate === false ? E4M3.overflowCode : E4M3_MAX_CODE;
  const n = bits.length;
  for (let i = 0; i < n; i++) {
    const u = bits[i]!;
    const sign = (u >>> 24) & 0x80;
    const a = u & 0x7fffffff;
    let c: number;
    if (a >= MIN_NORMAL_BITS) {
      if (a >= OVERFLOW_BITS) c = a > 0x7f800000 ? E4M3_NAN : overflow;
      // encodeScalar's rounding with this format's shift and rebias as literals
      else c = ((a + 0x7ffff + ((a >>> 20) & 1)) >>> 20) - 960;
    } else {
      c = encodeSubnormal(a, SUBNORMAL_SCALE);
    }
    out[i] = sign | c;
  }
  return out;
}

/** Decodes E4M3 bytes to a Float32Array through the 256-entry table. */
export function decodeE4M3Array(q: Uint8Array, out: Float32Array = new Float32Array(q.length)): Float32Array {
  return decodeArray(E4M3, q, out);
}
