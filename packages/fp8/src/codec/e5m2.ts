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
import { RNE_MAGIC, asFloat32, bitsView, f32Scratch, u32Scratch } from './common';
import type { EncodeOptions } from './common';

export const E5M2_MAX = 57344;
export const E5M2_MIN_NORMAL = 2 ** -14;
export const E5M2_MIN_SUBNORMAL = 2 ** -16;
export const E5M2_NAN = 0x7f;
export const E5M2_INF = 0x7c;
export const E5M2_MAX_CODE = 0x7b;

function decodeE5M2Scalar(b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const e = (b >> 2) & 0x1f;
  const m = b & 0x3;
  if (e === 0x1f) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * m * 2 ** -16;
  return sign * (1 + m / 4) * 2 ** (e - 15);
}

/** Value of every E5M2 byte (±Infinity for 0x7c/0xfc, NaN for the 6 NaN codes). */
export const E5M2_LUT: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) t[b] = decodeE5M2Scalar(b);
  return t;
})();

/** f32 bits of 2^-14. */
const MIN_NORMAL_BITS = 0x38800000;
/** f32 bits of 61440: at or above it a finite value rounds past 57344. */
const OVERFLOW_BITS = 0x47700000;

function encodeSubnormal(a: number): number {
  f32Scratch[0] = 0;
  u32Scratch[0] = a;
  const v = f32Scratch[0]! * 65536; // |x| / 2^-16, exact
  return v + RNE_MAGIC - RNE_MAGIC; // 4 is the code of 2^-14: rounding up needs no special case
}

/** Encodes one number to an E5M2 byte (see EncodeOptions for the overflow policy). */
export function encodeE5M2(x: number, opts: EncodeOptions = {}): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  const sign = (u >>> 24) & 0x80;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | E5M2_NAN;
  if (a >= OVERFLOW_BITS) return sign | (opts.saturate === false ? E5M2_INF : E5M2_MAX_CODE);
  if (a >= MIN_NORMAL_BITS) return sign | (((a + 0xfffff + ((a >>> 21) & 1)) >>> 21) - 448);
  return sign | encodeSubnormal(a);
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
  if (out.length < x.length) throw new RangeError(`encodeE5M2Array: out has ${out.length} elements, need ${x.length}`);
  const bits = bitsView(asFloat32(x));
  const overflow = opts.saturate === false ? E5M2_INF : E5M2_MAX_CODE;
  const n = bits.length;
  for (let i = 0; i < n; i++) {
    const u = bits[i]!;
    const sign = (u >>> 24) & 0x80;
    const a = u & 0x7fffffff;
    let c: number;
    if (a >= MIN_NORMAL_BITS) {
      if (a >= OVERFLOW_BITS) c = a > 0x7f800000 ? E5M2_NAN : overflow;
      else c = ((a + 0xfffff + ((a >>> 21) & 1)) >>> 21) - 448;
    } else {
      c = encodeSubnormal(a);
    }
    out[i] = sign | c;
  }
  return out;
}

/** Decodes E5M2 bytes to a Float32Array through the 256-entry table. */
export function decodeE5M2Array(q: Uint8Array, out: Float32Array = new Float32Array(q.length)): Float32Array {
  if (out.length < q.length) throw new RangeError(`decodeE5M2Array: out has ${out.length} elements, need ${q.length}`);
  const lut = E5M2_LUT;
  for (let i = 0; i < q.length; i++) out[i] = lut[q[i]!]!;
  return out;
}
