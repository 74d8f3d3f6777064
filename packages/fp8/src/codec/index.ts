// FP8 codecs: E4M3 (e4m3fn) and E5M2, plus format-generic helpers.
import { E4M3_LUT, decodeE4M3Array, encodeE4M3Array } from './e4m3';
import { E5M2_LUT, decodeE5M2Array, encodeE5M2Array } from './e5m2';
import type { EncodeOptions, Fp8Format } from './common';

export * from './e4m3';
export * from './e5m2';
export type { EncodeOptions, Fp8Format } from './common';

/** The 256-entry decode table of a format. */
export function decodeTable(format: Fp8Format): Float32Array {
  return format === 'e4m3' ? E4M3_LUT : E5M2_LUT;
}

/** Encodes numbers to FP8 bytes of the given format. */
export function encodeFp8(
  x: ArrayLike<number>,
  format: Fp8Format = 'e4m3',
  opts: EncodeOptions = {},
  out?: Uint8Array,
): Uint8Array {
  return format === 'e4m3' ? encodeE4M3Array(x, opts, out) : encodeE5M2Array(x, opts, out);
}

/** Decodes FP8 bytes of the given format to a Float32Array. */
export function decodeFp8(q: Uint8Array, format: Fp8Format = 'e4m3', out?: Float32Array): Float32Array {
  return format === 'e4m3' ? decodeE4M3Array(q, out) : decodeE5M2Array(q, out);
}

/** The largest finite value of a format. */
export function fp8Max(format: Fp8Format): number {
  return format === 'e4m3' ? 448 : 57344;
}
