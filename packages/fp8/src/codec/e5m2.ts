// FP8 E5M2 (torch.float8_e5m2): an IEEE-style binary8 with the top byte of an f16's layout.
//
// Layout S.EEEEE.MM, exponent bias 15, with infinities and NaNs:
//   E = 31, M = 0: ±Infinity (0x7c / 0xfc);  E = 31, M != 0: NaN (canonical 0x7f / 0xff)
//   normal    (E = 1..30):  (-1)^S * 2^(E-15) * (1 + M/4)     largest: 0x7b = 57344
//   subnormal (E = 0):      (-1)^S * 2^-14  * (M/4)           smallest: 2^-16
//
// Encoding rounds to nearest, ties to even, on the f32 bits. Overflow policy: see EncodeOptions
// (saturate to ±57344, ±Infinity included, by default; IEEE/torch overflow to ±Infinity with
// saturate:false: |x| >= 61440, the tie between 57344 and 65536, goes to the even 65536 = Inf).
import { decodeArray, encodeArrayInput, encodeScalar, encodeSubnormal, makeCodec } from './common';
import type { EncodeOptions } from './common';

export const E5M2_MAX = 57344;
export const E5M2_MIN_NORMAL = 2 ** -14;
export const E5M2_MIN_SUBNORMAL = 2 ** -16;
export const E5M2_NAN = 0x7f;
export const E5M2_INF = 0x7c;
export const E5M2_MAX_CODE = 0x7b;

// Overflow starts at 61440, the midpoint of 57344 and 65536 (the tie goes to the even 65536).
const E5M2 = makeCodec({
  name: 'E5M2',
  expBits: 5,
  manBits: 2,
  bias: 15,
  hasInf: true,
  maxCode: E5M2_MAX_CODE,
  nanCode: E5M2_NAN,
  overflowCode: E5M2_INF,
});

/** Value of every E5M2 byte (±Infinity for 0x7c/0xfc, NaN for the 6 NaN codes). */
export const E5M2_LUT: Float32Array = E5M2.lut;

// The hot loop of encodeE5M2Array reads these as plain constants, which keeps it at full speed
// (a loop shared by both formats ran measurably slower in bench/run.ts).
const MIN_NORMAL_BITS = E5M2.minNormalBits;
const OVERFLOW_BITS = E5M2.overflowBits;
const SUBNORMAL_SCALE = E5M2.subnormalScale;

/** Encodes one number to an E5M2 byte (see EncodeOptions for the overflow policy). */
export function encodeE5M2(x: number, opts: EncodeOptions = {}): number {
  return encodeScalar(E5M2, x, opts.saturate !== false);
}

/** Decodes one E5M2 byte. */
export function decodeE5M2(b: number): number {
  return E5M2_LUT[b & 0xff]!;
}

/** Encodes an array of numbers (rounded to f32 first) into E5M2 bytes. */
export function encodeE5M2Array(
  x: ArrayLike<number>,
  opts: EncodeOptions = {},
  out: Uint8Array = new Uint8Array(x.length),
): Uint8Array {
  const bits = encodeArrayInput(E5M2, x, out);
  const overflow = opts.saturate === false ? E5M2.overflowCode : E5M2_MAX_CODE;
  const n = bits.length;
  for (let i = 0; i < n; i++) {
    const u = bits[i]!;
    const sign = (u >>> 24) & 0x80;
    const a = u & 0x7fffffff;
    let c: number;
    if (a >= MIN_NORMAL_BITS) {
      if (a >= OVERFLOW_BITS) c = a > 0x7f800000 ? E5M2_NAN : overflow;
      // encodeScalar's rounding with this format's shift and rebias as literals
      else c = ((a + 0xfffff + ((a >>> 21) & 1)) >>> 21) - 448;
    } else {
      c = encodeSubnormal(a, SUBNORMAL_SCALE);
    }
    out[i] = sign | c;
  }
  return out;
}

/** Decodes E5M2 bytes to a Float32Array through the 256-entry table. */
export function decodeE5M2Array(q: Uint8Array, out: Float32Array = new Float32Array(q.length)): Float32Array {
  return decodeArray(E5M2, q, out);
}
