// safetensors: read (streamed, positioned reads) and write (atomic) on raw host arrays.
//
// Format: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON
//   {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}
// padded with spaces, then the data section; offsets are relative to the data section.
//
// Independent of the Tensor class: tensors here are `{ dtype, shape, data }` with `data` in the dtype's
// host storage array (see dtype.ts). Dtypes core has no storage for (I64, I16, I8, U16, U64) are readable
// as raw bytes (`getRaw`) and convertible to i32 with a range check (`getI32` / `rawToI32`).
//
// Node-only code: file paths need `node:fs` / `node:path`, which are fetched at call time through
// `process.getBuiltinModule` (Node >= 20.16) instead of a static import, so this module (and the rest of
// core) bundles for browsers unchanged. In a browser, pass the file's bytes as a Uint8Array / ArrayBuffer;
// calling a path-based function there throws a SafetensorsError saying so.
//
// Writing mirrors the Python `safetensors` library byte for byte: tensors are laid out sorted by dtype
// (widest/"largest" dtype first, in the library's dtype order) and then by name, the header JSON is
// compact, `__metadata__` comes first (its keys sorted here, for determinism), and the header is padded
// with spaces so the data section starts 8-byte aligned. Every tensor is then aligned to its element size.
import type { DType, StorageArray } from '../dtype';
import { bytesPerElement, isDType, storageArrayMatches, storageFromBytes } from '../dtype';

type NodeFs = typeof import('node:fs');
type NodePath = typeof import('node:path');

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

const ST_BYTES: Record<SafetensorsDType, number> = {
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

const ST_TO_CORE: Partial<Record<SafetensorsDType, DType>> = {
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

const CORE_TO_ST: Record<DType, SafetensorsDType> = {
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
const ST_LAYOUT_RANK: Record<SafetensorsDType, number> = {
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

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// ---------------------------------------------------------------------------------------------------
// Node access (lazy, see the file comment)

interface MaybeNodeProcess {
  getBuiltinModule?: (id: string) => unknown;
  pid?: number;
}

function nodeProcess(): MaybeNodeProcess | undefined {
  return (globalThis as { process?: MaybeNodeProcess }).process;
}

function nodeBuiltin<T>(id: string, what: string): T {
  const mod = nodeProcess()?.getBuiltinModule?.(id) as T | undefined;
  if (mod === undefined) {
    throw new SafetensorsError(
      `${what} needs ${id} (Node >= 20.16 with process.getBuiltinModule); elsewhere, pass the file's bytes as a Uint8Array`,
    );
  }
  return mod;
}

/** @internal */
export const nodeFs = (what = 'file access'): NodeFs => nodeBuiltin<NodeFs>('node:fs', what);
/** @internal */
export const nodePath = (what = 'file access'): NodePath => nodeBuiltin<NodePath>('node:path', what);

// ---------------------------------------------------------------------------------------------------
// byte sources

interface ByteSource {
  readonly label: string;
  readonly size: number;
  /** A fresh copy (offset 0 in its own buffer) of `length` bytes at `offset`. */
  read(offset: number, length: number): Uint8Array;
  close(): void;
}

class MemorySource implements ByteSource {
  private bytes: Uint8Array | null;
  readonly size: number;
  constructor(
    bytes: Uint8Array,
    readonly label: string,
  ) {
    // a plain view: Node Buffers' slice() would alias instead of copying
    this.bytes = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.size = bytes.byteLength;
  }
  read(offset: number, length: number): Uint8Array {
    if (this.bytes === null) throw new SafetensorsError('read after close()', { file: this.label });
    return this.bytes.slice(offset, offset + length);
  }
  close(): void {
    this.bytes = null;
  }
}

const READ_CHUNK = 1 << 30;

class FileSource implements ByteSource {
  private fd: number | null;
  readonly size: number;
  private readonly fs: NodeFs;
  constructor(readonly label: string) {
    this.fs = nodeFs(`reading ${label}`);
    try {
      this.fd = this.fs.openSync(label, 'r');
    } catch (e) {
      throw new SafetensorsError(`cannot open: ${(e as Error).message}`, { file: label, cause: e });
    }
    try {
      const st = this.fs.fstatSync(this.fd);
      if (!st.isFile()) throw new SafetensorsError('not a regular file; expected a .safetensors file', { file: label });
      this.size = st.size;
    } catch (e) {
      this.close();
      throw e;
    }
  }
  read(offset: number, length: number): Uint8Array {
    if (this.fd === null) throw new SafetensorsError('read after close()', { file: this.label });
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = this.fs.readSync(this.fd, out, done, Math.min(length - done, READ_CHUNK), offset + done);
      if (n === 0) {
        throw new SafetensorsError(
          `unexpected end of file reading bytes [${offset}, ${offset + length}) (file is ${this.size} bytes; was it truncated while open?)`,
          { file: this.label },
        );
      }
      done += n;
    }
    return out;
  }
  close(): void {
    if (this.fd !== null) {
      const fd = this.fd;
      this.fd = null;
      this.fs.closeSync(fd);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// header parsing and validation

interface Entry {
  name: string;
  stDtype: SafetensorsDType;
  shape: number[];
  begin: number;
  end: number;
}

const isPlainObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

const fmtShape = (s: readonly unknown[]): string => `[${s.map((d) => String(d)).join(', ')}]`;

/** Product of a validated shape; throws when it exceeds 2^53. */
function elementCount(shape: readonly number[], err: (msg: string) => SafetensorsError): number {
  let n = 1;
  for (const d of shape) n *= d;
  if (!Number.isSafeInteger(n)) throw err(`shape ${fmtShape(shape)} has more than 2^53 elements`);
  return n;
}

function isShape(x: unknown): x is number[] {
  return Array.isArray(x) && x.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0);
}

function parseHeader(src: ByteSource, opts: ReadSafetensorsOptions): { metadata: Record<string, string>; entries: Map<string, Entry>; dataStart: number } {
  const file = src.label;
  const fail = (msg: string, tensor?: string): SafetensorsError =>
    new SafetensorsError(msg, tensor !== undefined ? { file, tensor } : { file });

  if (src.size < 8) {
    throw fail(`file is ${src.size} bytes, shorter than the 8-byte header length prefix; expected a safetensors file`);
  }
  const prefix = src.read(0, 8);
  const n64 = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n64 > BigInt(MAX_HEADER_BYTES)) {
    throw fail(`header length ${n64} bytes exceeds the limit of ${MAX_HEADER_BYTES} bytes (corrupt length prefix, or not a safetensors file?)`);
  }
  const n = Number(n64);
  if (8 + n > src.size) {
    throw fail(`header length ${n} bytes runs past the end of the file (${src.size} bytes, so at most ${src.size - 8} bytes of header); truncated or not a safetensors file?`);
  }
  const dataStart = 8 + n;
  const dataSize = src.size - dataStart;

  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(src.read(8, n));
  } catch {
    throw fail('header is not valid UTF-8; expected a UTF-8 JSON object');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    const snippet = text.length > 60 ? `${text.slice(0, 60)}…` : text;
    throw fail(`header is not valid JSON (${(e as Error).message}); header starts with ${JSON.stringify(snippet)}`);
  }
  if (!isPlainObject(json)) {
    throw fail(`header JSON is ${json === null ? 'null' : Array.isArray(json) ? 'an array' : typeof json}; expected an object {name: {dtype, shape, data_offsets}}`);
  }

  let metadata: Record<string, string> = {};
  const entries = new Map<string, Entry>();
  for (const [name, v] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (v === null) continue;
      if (!isPlainObject(v)) throw fail(`__metadata__ is ${Array.isArray(v) ? 'an array' : typeof v}; expected an object of string values`);
      const md: Record<string, string> = {};
      for (const [k, s] of Object.entries(v)) {
        if (typeof s !== 'string') throw fail(`__metadata__[${JSON.stringify(k)}] is ${JSON.stringify(s)}; expected a string value`);
        md[k] = s;
      }
      metadata = md;
      continue;
    }
    if (!isPlainObject(v)) throw fail(`entry is ${JSON.stringify(v)}; expected an object {dtype, shape, data_offsets}`, name);
    const missing = ['dtype', 'shape', 'data_offsets'].filter((k) => !(k in v));
    if (missing.length > 0) throw fail(`entry is missing ${missing.join(', ')}; expected {dtype, shape, data_offsets}`, name);
    const { dtype, shape, data_offsets: offs } = v;
    if (!isSafetensorsDType(dtype)) {
      throw fail(`unknown dtype ${JSON.stringify(dtype)}; supported: ${SAFETENSORS_DTYPES.join(', ')}`, name);
    }
    if (!isShape(shape)) throw fail(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`, name);
    if (
      !Array.isArray(offs) ||
      offs.length !== 2 ||
      !offs.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0) ||
      (offs[0] as number) > (offs[1] as number)
    ) {
      throw fail(`data_offsets ${JSON.stringify(offs)} is not [begin, end] with integers 0 <= begin <= end`, name);
    }
    const begin = offs[0] as number;
    const end = offs[1] as number;
    const count = elementCount(shape, (m) => fail(m, name));
    const need = count * ST_BYTES[dtype];
    if (end - begin !== need) {
      throw fail(
        `data_offsets [${begin}, ${end}] hold ${end - begin} bytes, but shape ${fmtShape(shape)} of ${dtype} needs ${need} bytes (${count} elements x ${ST_BYTES[dtype]} bytes)`,
        name,
      );
    }
    if (end > dataSize) {
      throw fail(
        `data_offsets [${begin}, ${end}] run past the end of the data section (${dataSize} bytes after the ${n}-byte header); the file is truncated (${src.size} bytes, needs at least ${dataStart + end})`,
        name,
      );
    }
    entries.set(name, { name, stDtype: dtype, shape: shape.slice(), begin, end });
  }

  // Each non-empty tensor owns its byte range; by default the ranges must also tile the data section.
  const spans = [...entries.values()].filter((e) => e.end > e.begin).sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let prev: Entry | undefined;
  for (const e of spans) {
    if (e.begin < cursor && prev !== undefined) {
      throw fail(
        `tensors ${JSON.stringify(prev.name)} (bytes [${prev.begin}, ${prev.end})) and ${JSON.stringify(e.name)} (bytes [${e.begin}, ${e.end})) overlap; each tensor needs its own byte range`,
      );
    }
    if (e.begin > cursor && !opts.allowGaps) {
      throw fail(
        `${e.begin - cursor} unused bytes [${cursor}, ${e.begin}) before tensor ${JSON.stringify(e.name)}; expected tensors to be contiguous (pass allowGaps to accept)`,
      );
    }
    cursor = e.end;
    prev = e;
  }
  if (cursor < dataSize && !opts.allowGaps) {
    throw fail(
      `${dataSize - cursor} unused bytes after the last tensor (data section is ${dataSize} bytes, tensors end at ${cursor}); expected the data section to end with the last tensor (pass allowGaps to accept)`,
    );
  }
  return { metadata, entries, dataStart };
}

// ---------------------------------------------------------------------------------------------------
// integer conversion

/**
 * Converts a raw integer tensor (I64, I32, I16, I8, U64, U32, U16, U8, BOOL) to an Int32Array, throwing
 * when an element is outside the i32 range. `label` names the tensor in errors.
 */
export function rawToI32(raw: SafetensorsRawTensor, label = 'tensor'): Int32Array {
  const { stDtype, bytes } = raw;
  const bpe = ST_BYTES[stDtype];
  if (bytes.byteLength % bpe !== 0) {
    throw new SafetensorsError(`${label}: ${bytes.byteLength} bytes is not a whole number of ${stDtype} elements`);
  }
  const n = bytes.byteLength / bpe;
  const b = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  const out = new Int32Array(n);
  const range = (i: number, v: bigint | number): SafetensorsError =>
    new SafetensorsError(
      `${label}: element ${i} of ${stDtype} = ${v} is outside the i32 range [-2147483648, 2147483647]; cannot convert to i32`,
    );
  switch (stDtype) {
    case 'I8':
      out.set(new Int8Array(b.buffer, b.byteOffset, n));
      return out;
    case 'U8':
    case 'BOOL':
      out.set(b);
      return out;
    case 'I16':
      out.set(new Int16Array(b.buffer, b.byteOffset, n));
      return out;
    case 'U16':
      out.set(new Uint16Array(b.buffer, b.byteOffset, n));
      return out;
    case 'I32':
      out.set(new Int32Array(b.buffer, b.byteOffset, n));
      return out;
    case 'U32': {
      const u = new Uint32Array(b.buffer, b.byteOffset, n);
      for (let i = 0; i < n; i++) {
        const v = u[i]!;
        if (v > 0x7fffffff) throw range(i, v);
        out[i] = v;
      }
      return out;
    }
    case 'I64':
    case 'U64': {
      // little-endian halves: the value fits in i32 iff the high word is the sign extension of the low word
      const w = new Int32Array(b.buffer, b.byteOffset, 2 * n);
      const signed = stDtype === 'I64';
      for (let i = 0; i < n; i++) {
        const lo = w[2 * i]!;
        const hi = w[2 * i + 1]!;
        if (signed ? hi !== lo >> 31 : hi !== 0 || lo < 0) {
          const dv = new DataView(b.buffer, b.byteOffset + 8 * i, 8);
          throw range(i, signed ? dv.getBigInt64(0, true) : dv.getBigUint64(0, true));
        }
        out[i] = lo;
      }
      return out;
    }
    default:
      throw new SafetensorsError(`${label}: dtype ${stDtype} is not an integer dtype; cannot convert to i32`);
  }
}

// ---------------------------------------------------------------------------------------------------
// reader

/** An open safetensors file (or buffer). Tensors are read on demand; call close() when done. */
export class SafetensorsFile {
  /** The `__metadata__` string map (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Byte position where the data section starts (8 + header length). */
  readonly dataStart: number;
  private readonly entries: Map<string, Entry>;
  private readonly sortedNames: string[];
  private closed = false;

  /** @internal use readSafetensors() */
  constructor(
    private readonly src: ByteSource,
    opts: ReadSafetensorsOptions,
  ) {
    const h = parseHeader(src, opts);
    this.metadata = Object.freeze(h.metadata);
    this.entries = h.entries;
    this.dataStart = h.dataStart;
    this.sortedNames = [...h.entries.keys()].sort(compareCodePoints);
  }

  /** The file path, or the label of in-memory input. */
  get label(): string {
    return this.src.label;
  }
  get size(): number {
    return this.src.size;
  }

  /** Tensor names, sorted. */
  names(): string[] {
    return this.sortedNames.slice();
  }
  has(name: string): boolean {
    return this.entries.has(name);
  }

  info(name: string): SafetensorsTensorInfo {
    const e = this.entry(name);
    return {
      dtype: ST_TO_CORE[e.stDtype] ?? (e.stDtype as SafetensorsRawOnlyDType),
      stDtype: e.stDtype,
      shape: e.shape.slice(),
      byteLength: e.end - e.begin,
      dataOffsets: [e.begin, e.end],
      fileOffset: this.dataStart + e.begin,
    };
  }

  /** The tensor's raw bytes (a fresh copy), for any dtype. */
  getRaw(name: string): SafetensorsRawTensor {
    const e = this.entry(name);
    return { stDtype: e.stDtype, shape: e.shape.slice(), bytes: this.src.read(this.dataStart + e.begin, e.end - e.begin) };
  }

  /** The tensor in its core dtype's storage (a fresh array). Raw-only dtypes throw: use getRaw / getI32. */
  get(name: string): SafetensorsTensor {
    const e = this.entry(name);
    const dtype = ST_TO_CORE[e.stDtype];
    if (dtype === undefined) {
      throw new SafetensorsError(
        `dtype ${e.stDtype} has no core dtype; use getRaw(name) for its bytes, or getI32(name) to convert to i32`,
        { file: this.src.label, tensor: name },
      );
    }
    const bytes = this.src.read(this.dataStart + e.begin, e.end - e.begin);
    return { dtype, shape: e.shape.slice(), data: storageFromBytes(dtype, bytes) };
  }

  /** An integer tensor of any integer dtype converted to i32 (range-checked). */
  getI32(name: string): SafetensorsTensor & { dtype: 'i32'; data: Int32Array } {
    const raw = this.getRaw(name);
    return { dtype: 'i32', shape: raw.shape, data: rawToI32(raw, `safetensors ${this.src.label}: tensor ${JSON.stringify(name)}`) };
  }

  close(): void {
    if (!this.closed) {
      this.closed = true;
      this.src.close();
    }
  }

  private entry(name: string): Entry {
    if (this.closed) throw new SafetensorsError('file is closed', { file: this.src.label, tensor: name });
    const e = this.entries.get(name);
    if (e === undefined) {
      const some = this.sortedNames.slice(0, 5).map((s) => JSON.stringify(s));
      throw new SafetensorsError(
        `no such tensor (the file has ${this.sortedNames.length}${some.length > 0 ? `: ${some.join(', ')}${this.sortedNames.length > 5 ? ', …' : ''}` : ''})`,
        { file: this.src.label, tensor: name },
      );
    }
    return e;
  }
}

/**
 * Opens a safetensors file by path (Node: header read now, tensors read on demand with positioned reads)
 * or parses one already in memory. Validates the whole header up front.
 */
export function readSafetensors(input: string | Uint8Array | ArrayBuffer, opts: ReadSafetensorsOptions = {}): SafetensorsFile {
  let src: ByteSource;
  if (typeof input === 'string') src = new FileSource(input);
  else if (input instanceof Uint8Array) src = new MemorySource(input, opts.label ?? '<in-memory bytes>');
  else if (input instanceof ArrayBuffer) src = new MemorySource(new Uint8Array(input), opts.label ?? '<in-memory bytes>');
  else throw new SafetensorsError(`readSafetensors expects a path, Uint8Array or ArrayBuffer, got ${typeof input}`);
  try {
    return new SafetensorsFile(src, opts);
  } catch (e) {
    src.close();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------
// writer

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

interface PreparedTensor {
  name: string;
  stDtype: SafetensorsDType;
  shape: number[];
  bytes: Uint8Array;
}

interface Prepared {
  header: Uint8Array; // length prefix + padded JSON
  tensors: PreparedTensor[]; // in layout order
  totalSize: number;
}

function isRaw(t: SafetensorsWritable): t is Extract<SafetensorsWritable, { stDtype: unknown }> {
  return 'stDtype' in t;
}

/** Validates one tensor given to a writer and returns its bytes (a view, not a copy). @internal */
export function prepareTensor(name: string, t: SafetensorsWritable, file?: string): PreparedTensor {
  const fail = (msg: string) => new SafetensorsError(msg, file !== undefined ? { file, tensor: name } : { tensor: name });
  if (name === '__metadata__') throw fail('"__metadata__" is reserved for the metadata map; rename the tensor');
  if (!isPlainObject(t)) throw fail(`expected {dtype, shape, data} or {stDtype, shape, bytes}, got ${t === null ? 'null' : typeof t}`);
  if (!isShape(t.shape)) throw fail(`shape ${JSON.stringify(t.shape)} is not a list of non-negative integers`);
  const count = elementCount(t.shape, fail);
  if (isRaw(t)) {
    if (!isSafetensorsDType(t.stDtype)) throw fail(`unknown dtype ${JSON.stringify(t.stDtype)}; supported: ${SAFETENSORS_DTYPES.join(', ')}`);
    if (!(t.bytes instanceof Uint8Array)) throw fail(`bytes must be a Uint8Array`);
    const need = count * ST_BYTES[t.stDtype];
    if (t.bytes.byteLength !== need) {
      throw fail(`has ${t.bytes.byteLength} bytes, but shape ${fmtShape(t.shape)} of ${t.stDtype} needs ${need} bytes`);
    }
    return { name, stDtype: t.stDtype, shape: t.shape.slice(), bytes: t.bytes };
  }
  if (!isDType(t.dtype)) throw fail(`unknown dtype ${JSON.stringify(t.dtype)}; expected a core dtype`);
  if (!ArrayBuffer.isView(t.data) || !storageArrayMatches(t.dtype, t.data)) {
    const got = ArrayBuffer.isView(t.data) ? t.data.constructor.name : typeof t.data;
    throw fail(`data is a ${got}, which is not the storage array of dtype ${t.dtype}`);
  }
  if (t.data.length !== count) {
    throw fail(`data has ${t.data.length} elements, but shape ${fmtShape(t.shape)} needs ${count}`);
  }
  return {
    name,
    stDtype: CORE_TO_ST[t.dtype],
    shape: t.shape.slice(),
    bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, count * bytesPerElement(t.dtype)),
  };
}

function prepare(
  tensors: Record<string, SafetensorsWritable>,
  metadata: Record<string, string> | undefined,
  file?: string,
): Prepared {
  if (!LITTLE_ENDIAN_HOST) throw new SafetensorsError('writing needs a little-endian host');
  if (!isPlainObject(tensors)) throw new SafetensorsError('tensors must be an object {name: tensor}', file !== undefined ? { file } : {});
  const list = Object.keys(tensors).map((name) => prepareTensor(name, tensors[name]!, file));
  list.sort((a, b) => ST_LAYOUT_RANK[b.stDtype] - ST_LAYOUT_RANK[a.stDtype] || compareCodePoints(a.name, b.name));

  // JSON written by hand: object key order must follow the layout (JS objects would hoist integer-like keys).
  const parts: string[] = [];
  if (metadata !== undefined) {
    if (!isPlainObject(metadata)) throw new SafetensorsError('metadata must be an object of string values', file !== undefined ? { file } : {});
    const keys = Object.keys(metadata).sort(compareCodePoints);
    const md = keys.map((k) => {
      const v = metadata[k];
      if (typeof v !== 'string') {
        throw new SafetensorsError(`metadata[${JSON.stringify(k)}] is ${JSON.stringify(v)}; safetensors metadata values must be strings`, file !== undefined ? { file } : {});
      }
      return `${JSON.stringify(k)}:${JSON.stringify(v)}`;
    });
    parts.push(`"__metadata__":{${md.join(',')}}`);
  }
  let offset = 0;
  for (const t of list) {
    const end = offset + t.bytes.byteLength;
    parts.push(`${JSON.stringify(t.name)}:{"dtype":"${t.stDtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${end}]}`);
    offset = end;
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const padded = Math.ceil(json.byteLength / 8) * 8;
  if (padded > MAX_HEADER_BYTES) throw new SafetensorsError(`header would be ${padded} bytes, over the ${MAX_HEADER_BYTES}-byte limit`);
  const header = new Uint8Array(8 + padded).fill(0x20, 8 + json.byteLength);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return { header, tensors: list, totalSize: header.byteLength + offset };
}

/** Serializes tensors to safetensors bytes (byte-identical to the Python library's output). */
export function serializeSafetensors(tensors: Record<string, SafetensorsWritable>, metadata?: Record<string, string>): Uint8Array {
  const p = prepare(tensors, metadata);
  const out = new Uint8Array(p.totalSize);
  out.set(p.header, 0);
  let pos = p.header.byteLength;
  for (const t of p.tensors) {
    out.set(t.bytes, pos);
    pos += t.bytes.byteLength;
  }
  return out;
}

/**
 * Writes `path` atomically: the chunks go to a temp file in the same directory (`.<name>.tmp-<pid>-<rand>`),
 * which is fsynced and renamed over `path`. On any failure the temp file is removed and `path` is untouched.
 * @internal
 */
export function writeFileAtomic(path: string, chunks: Iterable<Uint8Array>): void {
  const fs = nodeFs(`writing ${path}`);
  const pathMod = nodePath(`writing ${path}`);
  const dir = pathMod.dirname(path);
  const rand = Math.floor(Math.random() * 0x100000000).toString(16).padStart(8, '0');
  const tmp = pathMod.join(dir, `.${pathMod.basename(path)}.tmp-${nodeProcess()?.pid ?? 0}-${rand}`);
  let fd: number | null = null;
  try {
    fd = fs.openSync(tmp, 'wx');
    for (const chunk of chunks) {
      let done = 0;
      while (done < chunk.byteLength) {
        done += fs.writeSync(fd, chunk, done, Math.min(chunk.byteLength - done, READ_CHUNK));
      }
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, path);
  } catch (e) {
    if (fd !== null) {
      try {
        fs.closeSync(fd);
      } catch {
        /* already failing */
      }
    }
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      /* best effort */
    }
    throw new SafetensorsError(`writing failed, file left unchanged: ${(e as Error).message}`, { file: path, cause: e });
  }
  // Persist the rename itself (best effort: not every platform can fsync a directory).
  try {
    const dfd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch {
    /* ignore */
  }
}

/**
 * Writes tensors to a safetensors file atomically (see writeFileAtomic), streaming tensor data without
 * building the whole file in memory. All tensors are validated before anything is written.
 */
export function writeSafetensors(
  path: string,
  tensors: Record<string, SafetensorsWritable>,
  metadata?: Record<string, string>,
): void {
  const p = prepare(tensors, metadata, path);
  writeFileAtomic(path, [p.header, ...p.tensors.map((t) => t.bytes)]);
}
