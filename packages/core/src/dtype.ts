// Data types and their host-side representations.
//
// Float types that JavaScript has no native array for (f16, bf16, fp8) are stored as raw bits:
// f16/bf16 in Uint16Array, fp8 in Uint8Array. Their codecs are bit-exact round-to-nearest-even.
import { Float16Array } from '@petamoriken/float16';

export const DTYPES = ['f32', 'f64', 'f16', 'bf16', 'i32', 'u32', 'u8', 'bool', 'fp8-e4m3', 'fp8-e5m2'] as const;

export type DType = (typeof DTYPES)[number];

/** The TypedArray that holds a dtype's raw storage on the host. */
export type StorageArray = Float32Array | Float64Array | Uint16Array | Int32Array | Uint32Array | Uint8Array;
/** What `Tensor.data()` returns: numbers, decoded where the storage holds bits (f16/bf16 → f32). */
export type NumericArray = Float32Array | Float64Array | Int32Array | Uint32Array | Uint8Array;

interface DTypeInfo {
  bytes: number;
  float: boolean;
  /** computable: elementwise math is defined on it (after decoding). fp8 is storage-only in core. */
  computable: boolean;
}

const INFO: Record<DType, DTypeInfo> = {
  f32: { bytes: 4, float: true, computable: true },
  f64: { bytes: 8, float: true, computable: true },
  f16: { bytes: 2, float: true, computable: true },
  bf16: { bytes: 2, float: true, computable: true },
  i32: { bytes: 4, float: false, computable: true },
  u32: { bytes: 4, float: false, computable: true },
  u8: { bytes: 1, float: false, computable: true },
  bool: { bytes: 1, float: false, computable: true },
  'fp8-e4m3': { bytes: 1, float: true, computable: false },
  'fp8-e5m2': { bytes: 1, float: true, computable: false },
};

export function isDType(x: unknown): x is DType {
  return typeof x === 'string' && (DTYPES as readonly string[]).includes(x);
}

export function assertDType(x: unknown): DType {
  if (!isDType(x)) throw new TypeError(`unknown dtype ${JSON.stringify(x)}; expected one of ${DTYPES.join(', ')}`);
  return x;
}

export const bytesPerElement = (d: DType): number => INFO[d].bytes;
export const isFloatDType = (d: DType): boolean => INFO[d].float;
export const isComputableDType = (d: DType): boolean => INFO[d].computable;

/**
 * A host copy of `a` (its first `n` elements). Not `slice()`: V8 copies a view of shared memory (a
 * kernel output in the GEMM engine's memory) element by element there, ~30x slower than `set`.
 */
export function copyOf<T extends StorageArray>(a: T, n = a.length): T {
  const out = new (a.constructor as new (n: number) => T)(n);
  out.set(n === a.length ? a : (a.subarray(0, n) as T));
  return out;
}

/** Allocates zeroed host storage of `size` elements. */
export function allocStorageArray(dtype: DType, size: number): StorageArray {
  switch (dtype) {
    case 'f32':
      return new Float32Array(size);
    case 'f64':
      return new Float64Array(size);
    case 'f16':
    case 'bf16':
      return new Uint16Array(size);
    case 'i32':
      return new Int32Array(size);
    case 'u32':
      return new Uint32Array(size);
    case 'u8':
    case 'bool':
    case 'fp8-e4m3':
    case 'fp8-e5m2':
      return new Uint8Array(size);
  }
}

/** Views raw little-endian bytes as a dtype's storage array (copying when misaligned). */
export function storageFromBytes(dtype: DType, bytes: Uint8Array): StorageArray {
  const bpe = bytesPerElement(dtype);
  if (bytes.byteLength % bpe !== 0) {
    throw new RangeError(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements (${bpe} bytes each)`);
  }
  const aligned = bytes.byteOffset % bpe === 0 ? bytes : bytes.slice();
  const n = bytes.byteLength / bpe;
  const arr = allocStorageArray(dtype, 0);
  const Ctor = arr.constructor as new (b: ArrayBufferLike, o: number, n: number) => StorageArray;
  return new Ctor(aligned.buffer, aligned.byteOffset, n);
}

/** The storage array constructor a dtype expects, for validating user-supplied arrays. */
export function storageArrayMatches(dtype: DType, a: ArrayBufferView): boolean {
  switch (dtype) {
    case 'f32':
      return a instanceof Float32Array;
    case 'f64':
      return a instanceof Float64Array;
    case 'f16':
    case 'bf16':
      return a instanceof Uint16Array;
    case 'i32':
      return a instanceof Int32Array;
    case 'u32':
      return a instanceof Uint32Array;
    default:
      return a instanceof Uint8Array;
  }
}

// ---- bf16: the top 16 bits of an f32, rounded to nearest even; NaN stays a quiet NaN ----

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

export function f32ToBf16Bits(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x007fffff) !== 0) return ((u >>> 16) | 0x0040) & 0xffff;
  const rounded = u + 0x7fff + ((u >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

export function bf16BitsToF32(b: number): number {
  u32Scratch[0] = (b & 0xffff) << 16;
  return f32Scratch[0]!;
}

export function encodeBf16(src: ArrayLike<number>, out = new Uint16Array(src.length)): Uint16Array {
  const f = src instanceof Float32Array ? src : Float32Array.from(src);
  const u = new Uint32Array(f.buffer, f.byteOffset, f.length);
  for (let i = 0; i < u.length; i++) {
    const v = u[i]!;
    if ((v & 0x7f800000) === 0x7f800000 && (v & 0x007fffff) !== 0) out[i] = ((v >>> 16) | 0x0040) & 0xffff;
    else out[i] = ((v + 0x7fff + ((v >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

export function decodeBf16(bits: Uint16Array, out = new Float32Array(bits.length)): Float32Array {
  const u = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i]! << 16;
  return out;
}

// ---- f16 (IEEE binary16) through @petamoriken/float16 ----

export function encodeF16(src: ArrayLike<number>): Uint16Array {
  const h = new Float16Array(src as ArrayLike<number>);
  return new Uint16Array(h.buffer, h.byteOffset, h.length);
}

export function decodeF16(bits: Uint16Array, out = new Float32Array(bits.length)): Float32Array {
  const h = new Float16Array(bits.buffer, bits.byteOffset, bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = h[i]!;
  return out;
}

/** Decodes storage to numbers: f16/bf16 → Float32Array; others are returned as they are. */
export function toNumeric(dtype: DType, s: StorageArray): NumericArray {
  if (dtype === 'f16') return decodeF16(s as Uint16Array);
  if (dtype === 'bf16') return decodeBf16(s as Uint16Array);
  return s as NumericArray;
}

/** Encodes numbers into a dtype's storage (rounding floats, truncating toward zero for ints). */
export function fromNumeric(dtype: DType, src: ArrayLike<number>): StorageArray {
  switch (dtype) {
    case 'f16':
      return encodeF16(src);
    case 'bf16':
      return encodeBf16(src);
    // Typed sources convert through the typed-array constructor (a tight loop), not the iterator.
    case 'f32':
      return src instanceof Float32Array
        ? src
        : ArrayBuffer.isView(src)
          ? new Float32Array(src as unknown as Float64Array)
          : Float32Array.from(src);
    case 'f64':
      return src instanceof Float64Array
        ? src
        : ArrayBuffer.isView(src)
          ? new Float64Array(src as unknown as Float32Array)
          : Float64Array.from(src);
    case 'i32':
      return src instanceof Int32Array ? src : Int32Array.from(src, (v) => Math.trunc(v));
    case 'u32':
      return src instanceof Uint32Array ? src : Uint32Array.from(src, (v) => Math.trunc(v));
    case 'u8':
      return src instanceof Uint8Array ? src : Uint8Array.from(src, (v) => Math.trunc(v));
    case 'bool':
      return Uint8Array.from(src, (v) => (v ? 1 : 0));
    case 'fp8-e4m3':
    case 'fp8-e5m2':
      throw new TypeError(`core cannot encode numbers as ${dtype}; use the codecs of @dsv3/fp8`);
  }
}
