// Writing safetensors, byte for byte as the Python library lays files out (see safetensors.ts),
// through the atomic file writer.
import { bytesPerElement, isDType, storageArrayMatches } from '../dtype';
import { writeFileAtomic } from './files';
import { elementCount, fmtShape, isPlainObject, isShape } from './safetensors-read';
import {
  CORE_TO_ST,
  LITTLE_ENDIAN_HOST,
  MAX_HEADER_BYTES,
  SAFETENSORS_DTYPES,
  ST_BYTES,
  ST_LAYOUT_RANK,
  SafetensorsError,
  compareCodePoints,
  isSafetensorsDType,
  type SafetensorsDType,
  type SafetensorsWritable,
} from './safetensors-format';

// ---------------------------------------------------------------------------------------------------
// writer

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
  const fail = (msg: string) =>
    new SafetensorsError(msg, file !== undefined ? { file, tensor: name } : { tensor: name });
  if (name === '__metadata__') throw fail('"__metadata__" is reserved for the metadata map; rename the tensor');
  if (!isPlainObject(t))
    throw fail(`expected {dtype, shape, data} or {stDtype, shape, bytes}, got ${t === null ? 'null' : typeof t}`);
  if (!isShape(t.shape)) throw fail(`shape ${JSON.stringify(t.shape)} is not a list of non-negative integers`);
  const count = elementCount(t.shape, fail);
  if (isRaw(t)) {
    if (!isSafetensorsDType(t.stDtype))
      throw fail(`unknown dtype ${JSON.stringify(t.stDtype)}; supported: ${SAFETENSORS_DTYPES.join(', ')}`);
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
  if (!isPlainObject(tensors))
    throw new SafetensorsError('tensors must be an object {name: tensor}', file !== undefined ? { file } : {});
  const list = Object.keys(tensors).map((name) => prepareTensor(name, tensors[name]!, file));
  list.sort((a, b) => ST_LAYOUT_RANK[b.stDtype] - ST_LAYOUT_RANK[a.stDtype] || compareCodePoints(a.name, b.name));

  // JSON written by hand: object key order must follow the layout (JS objects would hoist integer-like keys).
  const parts: string[] = [];
  if (metadata !== undefined) {
    if (!isPlainObject(metadata))
      throw new SafetensorsError('metadata must be an object of string values', file !== undefined ? { file } : {});
    const keys = Object.keys(metadata).sort(compareCodePoints);
    const md = keys.map((k) => {
      const v = metadata[k];
      if (typeof v !== 'string') {
        throw new SafetensorsError(
          `metadata[${JSON.stringify(k)}] is ${JSON.stringify(v)}; safetensors metadata values must be strings`,
          file !== undefined ? { file } : {},
        );
      }
      return `${JSON.stringify(k)}:${JSON.stringify(v)}`;
    });
    parts.push(`"__metadata__":{${md.join(',')}}`);
  }
  let offset = 0;
  for (const t of list) {
    const end = offset + t.bytes.byteLength;
    parts.push(
      `${JSON.stringify(t.name)}:{"dtype":"${t.stDtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${end}]}`,
    );
    offset = end;
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const padded = Math.ceil(json.byteLength / 8) * 8;
  if (padded > MAX_HEADER_BYTES)
    throw new SafetensorsError(`header would be ${padded} bytes, over the ${MAX_HEADER_BYTES}-byte limit`);
  const header = new Uint8Array(8 + padded).fill(0x20, 8 + json.byteLength);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return { header, tensors: list, totalSize: header.byteLength + offset };
}

/** Serializes tensors to safetensors bytes (byte-identical to the Python library's output). */
export function serializeSafetensors(
  tensors: Record<string, SafetensorsWritable>,
  metadata?: Record<string, string>,
): Uint8Array {
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
