// The safetensors format's dtype tables (sizes, core dtypes, the Python library's layout order), the
// tensor shapes this module reads and writes, and its error type. See safetensors.ts for the format.
import type { DType, StorageArray } from '../dtype';

// ---------------------------------------------------------------------------------------------------
// dtypes

/** The dtype strings of the safetensors format that this module understands. */
export const SAFETENSORS_DTYPES = [
  'F64',
  'F32',
  'F16',
  'BF16',
  'I64',
  'I32',
  'I16',
  'I8',
  'U8',
  'U16',
  'U32',
  'U64',
  'BOOL',
  'F8_E4M3',
  'F8_E5M2',
] as const;
export type SafetensorsDType = (typeof SAFETENSORS_DTYPES)[number];
/** Safetensors dtypes that core has no dtype for: readable only as raw bytes (or converted to i32). */
export type SafetensorsRawOnlyDType = 'I64' | 'I16' | 'I8' | 'U16' | 'U64';

export const ST_BYTES: Record<SafetensorsDType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  U16: 2,
  U32: 4,
  U64: 8,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

export const ST_TO_CORE: Partial<Record<SafetensorsDType, DType>> = {
  F32: 'f32',
  F64: 'f64',
  F16: 'f16',
  BF16: 'bf16',
  I32: 'i32',
  U32: 'u32',
  U8: 'u8',
  BOOL: 'bool',
  F8_E4M3: 'fp8-e4m3',
  F8_E5M2: 'fp8-e5m2',
};

export const CORE_TO_ST: Record<DType, SafetensorsDType> = {
  f32: 'F32',
  f64: 'F64',
  f16: 'F16',
  bf16: 'BF16',
  i32: 'I32',
  u32: 'U32',
  u8: 'U8',
  bool: 'BOOL',
  'fp8-e4m3': 'F8_E4M3',
  'fp8-e5m2': 'F8_E5M2',
};

/**
 * The order of the Rust `Dtype` enum of the reference implementation; its serializer lays tensors out by
 * this rank, descending, then by name. Reproduced so our files are byte-identical to the Python library's.
 */
export const ST_LAYOUT_RANK: Record<SafetensorsDType, number> = {
  BOOL: 0,
  U8: 1,
  I8: 2,
  F8_E5M2: 3,
  F8_E4M3: 4,
  I16: 5,
  U16: 6,
  F16: 7,
  BF16: 8,
  I32: 9,
  U32: 10,
  F32: 11,
  F64: 12,
  I64: 13,
  U64: 14,
};

export function isSafetensorsDType(x: unknown): x is SafetensorsDType {
  return typeof x === 'string' && Object.hasOwn(ST_BYTES, x);
}
/** Bytes per element of a safetensors dtype. */
export const safetensorsDTypeBytes = (d: SafetensorsDType): number => ST_BYTES[d];
/** The core dtype a safetensors dtype maps to, or undefined for the raw-only ones (I64, I16, I8, U16, U64). */
export const coreDTypeOf = (d: SafetensorsDType): DType | undefined => ST_TO_CORE[d];
/** The safetensors dtype string a core dtype is stored as. */
export const safetensorsDTypeOf = (d: DType): SafetensorsDType => CORE_TO_ST[d];

// ---------------------------------------------------------------------------------------------------
// public types

/** A tensor in a core dtype, as host storage. */
export interface SafetensorsTensor {
  dtype: DType;
  shape: number[];
  data: StorageArray;
}

/** A tensor as raw little-endian bytes, in any safetensors dtype. */
export interface SafetensorsRawTensor {
  stDtype: SafetensorsDType;
  shape: number[];
  bytes: Uint8Array;
}

/**
 * What writers accept: a core tensor, or raw bytes (to write I64 etc., or to copy tensors unchanged).
 * Readers' results (SafetensorsTensor, SafetensorsRawTensor) are writable as they are.
 */
export type SafetensorsWritable =
  | { readonly dtype: DType; readonly shape: readonly number[]; readonly data: StorageArray }
  | { readonly stDtype: SafetensorsDType; readonly shape: readonly number[]; readonly bytes: Uint8Array };

export interface SafetensorsTensorInfo {
  /** The core dtype, or the safetensors string for dtypes core lacks (I64, I16, I8, U16, U64). */
  dtype: DType | SafetensorsRawOnlyDType;
  stDtype: SafetensorsDType;
  shape: number[];
  byteLength: number;
  /** [begin, end) relative to the data section, as in the header. */
  dataOffsets: [number, number];
  /** Absolute byte position of the tensor in the file. */
  fileOffset: number;
}

export interface ReadSafetensorsOptions {
  /** Accept unused bytes between tensors or after the last one (the reference library rejects them). */
  allowGaps?: boolean;
  /** Name used in error messages for in-memory input (default `<in-memory bytes>`). */
  label?: string;
}

/** Any problem with a safetensors file or with tensors given to a writer. */
export class SafetensorsError extends Error {
  readonly file: string | undefined;
  readonly tensor: string | undefined;
  constructor(message: string, opts: { file?: string; tensor?: string; cause?: unknown } = {}) {
    const where = [opts.file !== undefined ? `safetensors ${opts.file}` : 'safetensors'];
    if (opts.tensor !== undefined) where.push(`tensor ${JSON.stringify(opts.tensor)}`);
    super(`${where.join(': ')}: ${message}`, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = 'SafetensorsError';
    this.file = opts.file;
    this.tensor = opts.tensor;
  }
}

/** Headers larger than this are rejected (the reference implementation's limit). */
export const MAX_HEADER_BYTES = 100_000_000;

export const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Orders strings by Unicode code point (= UTF-8 byte order, as Rust's String ordering). @internal */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) {
      // A surrogate (0xd800-0xdfff) encodes a code point above 0xffff, so it sorts after 0xe000-0xffff.
      const sx = x >= 0xd800 && x <= 0xdfff;
      const sy = y >= 0xd800 && y <= 0xdfff;
      if (sx !== sy) return sx ? 1 : -1;
      return x - y;
    }
  }
  return a.length - b.length;
}
