// A tiny safetensors reader for the tests (core's reader is written separately).
// Layout: 8-byte little-endian header length N, N bytes of JSON header, then the raw data.
import { readFileSync } from 'node:fs';

export interface StTensor {
  dtype: string;
  shape: number[];
  data: Float32Array | Uint8Array | Int16Array | Int32Array;
}

interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

export function readSafetensors(path: string): Map<string, StTensor> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, HeaderEntry | unknown>;
  const base = 8 + n;
  const out = new Map<string, StTensor>();
  for (const [name, v] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const e = v as HeaderEntry;
    const [start, end] = e.data_offsets;
    // Copy into a fresh, aligned buffer.
    const bytes = new Uint8Array(end - start);
    bytes.set(buf.subarray(base + start, base + end));
    let data: StTensor['data'];
    switch (e.dtype) {
      case 'F32':
        data = new Float32Array(bytes.buffer);
        break;
      case 'U8':
      case 'F8_E4M3':
        data = bytes;
        break;
      case 'I16':
        data = new Int16Array(bytes.buffer);
        break;
      case 'I32':
        data = new Int32Array(bytes.buffer);
        break;
      default:
        throw new Error(`read-safetensors: unsupported dtype ${e.dtype} for ${name}`);
    }
    const count = e.shape.reduce((a, b) => a * b, 1);
    if (data.length !== count)
      throw new Error(`read-safetensors: ${name} has ${data.length} elements, shape says ${count}`);
    out.set(name, { dtype: e.dtype, shape: e.shape, data });
  }
  return out;
}
