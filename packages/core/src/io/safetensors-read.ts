// Reading safetensors: header parsing and validation, raw-to-i32 conversion, and SafetensorsFile
// (streamed, positioned reads of one tensor at a time). See safetensors.ts for the format.
import { storageFromBytes } from '../dtype';
import { FileSource, MemorySource, type ByteSource } from './files';
import {
  MAX_HEADER_BYTES,
  SAFETENSORS_DTYPES,
  ST_BYTES,
  ST_TO_CORE,
  SafetensorsError,
  compareCodePoints,
  isSafetensorsDType,
  type ReadSafetensorsOptions,
  type SafetensorsRawOnlyDType,
  type SafetensorsDType,
  type SafetensorsRawTensor,
  type SafetensorsTensor,
  type SafetensorsTensorInfo,
} from './safetensors-format';

// ---------------------------------------------------------------------------------------------------
// header parsing and validation

interface Entry {
  name: string;
  stDtype: SafetensorsDType;
  shape: number[];
  begin: number;
  end: number;
}

export const isPlainObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

export const fmtShape = (s: readonly unknown[]): string => `[${s.map((d) => String(d)).join(', ')}]`;

/** Product of a validated shape; throws when it exceeds 2^53. */
export function elementCount(shape: readonly number[], err: (msg: string) => SafetensorsError): number {
  let n = 1;
  for (const d of shape) n *= d;
  if (!Number.isSafeInteger(n)) throw err(`shape ${fmtShape(shape)} has more than 2^53 elements`);
  return n;
}

export function isShape(x: unknown): x is number[] {
  return Array.isArray(x) && x.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0);
}

function parseHeader(
  src: ByteSource,
  opts: ReadSafetensorsOptions,
): { metadata: Record<string, string>; entries: Map<string, Entry>; dataStart: number } {
  const file = src.label;
  const fail = (msg: string, tensor?: string): SafetensorsError =>
    new SafetensorsError(msg, tensor !== undefined ? { file, tensor } : { file });

  if (src.size < 8) {
    throw fail(`file is ${src.size} bytes, shorter than the 8-byte header length prefix; expected a safetensors file`);
  }
  const prefix = src.read(0, 8);
  const n64 = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n64 > BigInt(MAX_HEADER_BYTES)) {
    throw fail(
      `header length ${n64} bytes exceeds the limit of ${MAX_HEADER_BYTES} bytes (corrupt length prefix, or not a safetensors file?)`,
    );
  }
  const n = Number(n64);
  if (8 + n > src.size) {
    throw fail(
      `header length ${n} bytes runs past the end of the file (${src.size} bytes, so at most ${src.size - 8} bytes of header); truncated or not a safetensors file?`,
    );
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
    throw fail(
      `header JSON is ${json === null ? 'null' : Array.isArray(json) ? 'an array' : typeof json}; expected an object {name: {dtype, shape, data_offsets}}`,
    );
  }

  let metadata: Record<string, string> = {};
  const entries = new Map<string, Entry>();
  for (const [name, v] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (v === null) continue;
      if (!isPlainObject(v))
        throw fail(`__metadata__ is ${Array.isArray(v) ? 'an array' : typeof v}; expected an object of string values`);
      const md: Record<string, string> = {};
      for (const [k, s] of Object.entries(v)) {
        if (typeof s !== 'string')
          throw fail(`__metadata__[${JSON.stringify(k)}] is ${JSON.stringify(s)}; expected a string value`);
        md[k] = s;
      }
      metadata = md;
      continue;
    }
    if (!isPlainObject(v))
      throw fail(`entry is ${JSON.stringify(v)}; expected an object {dtype, shape, data_offsets}`, name);
    const missing = ['dtype', 'shape', 'data_offsets'].filter((k) => !(k in v));
    if (missing.length > 0)
      throw fail(`entry is missing ${missing.join(', ')}; expected {dtype, shape, data_offsets}`, name);
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
    return {
      stDtype: e.stDtype,
      shape: e.shape.slice(),
      bytes: this.src.read(this.dataStart + e.begin, e.end - e.begin),
    };
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
    return {
      dtype: 'i32',
      shape: raw.shape,
      data: rawToI32(raw, `safetensors ${this.src.label}: tensor ${JSON.stringify(name)}`),
    };
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
export function readSafetensors(
  input: string | Uint8Array | ArrayBuffer,
  opts: ReadSafetensorsOptions = {},
): SafetensorsFile {
  let src: ByteSource;
  if (typeof input === 'string') src = new FileSource(input);
  else if (input instanceof Uint8Array) src = new MemorySource(input, opts.label ?? '<in-memory bytes>');
  else if (input instanceof ArrayBuffer)
    src = new MemorySource(new Uint8Array(input), opts.label ?? '<in-memory bytes>');
  else throw new SafetensorsError(`readSafetensors expects a path, Uint8Array or ArrayBuffer, got ${typeof input}`);
  try {
    return new SafetensorsFile(src, opts);
  } catch (e) {
    src.close();
    throw e;
  }
}
