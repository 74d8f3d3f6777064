import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DTYPES, allocStorageArray, decodeBf16, decodeF16 } from '../src/dtype';
import type { SafetensorsRawTensor, SafetensorsTensor, SafetensorsWritable } from '../src/io';
import { SafetensorsError, rawToI32, readSafetensors, serializeSafetensors, writeSafetensors } from '../src/io';
import { FIX, bytesOf, hex, randomStorage, rng, tempPaths } from './safetensors-helpers';
import { expectSameBits } from '../src/testing';

const { tmpRoot, tmpFile, tmpDir } = tempPaths();

/** A safetensors file from a header (object or raw JSON text) and data bytes; `n` overrides the length prefix. */
function craft(header: unknown, data: Uint8Array | number = 0, n?: number): Uint8Array {
  const json = typeof header === 'string' ? Buffer.from(header, 'utf8') : Buffer.from(JSON.stringify(header), 'utf8');
  const d = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + json.length + d.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(n ?? json.length), true);
  out.set(json, 8);
  out.set(d, 8 + json.length);
  return out;
}

function writeTmp(bytes: Uint8Array, name?: string): string {
  const p = tmpFile(name);
  fs.writeFileSync(p, bytes);
  return p;
}

/** Reads a crafted file from disk and returns the error message (the read must fail). */
function errorOf(bytes: Uint8Array, opts = {}): string {
  const p = writeTmp(bytes, 'bad.safetensors');
  try {
    readSafetensors(p, opts).close();
  } catch (e) {
    expect(e).toBeInstanceOf(SafetensorsError);
    const msg = (e as Error).message;
    expect(msg).toContain(p); // names the file
    // the in-memory path reports the same problem
    expect(() => readSafetensors(bytes)).toThrow(SafetensorsError);
    return msg;
  }
  throw new Error('expected the read to fail');
}

describe('round trip', () => {
  const r = rng(42);
  const tensors: Record<string, SafetensorsTensor> = {};
  for (const dtype of DTYPES) {
    tensors[`t.${dtype}`] = { dtype, shape: [3, 5, 7], data: randomStorage(dtype, 105, r) };
    tensors[`t.${dtype}.scalar`] = { dtype, shape: [], data: randomStorage(dtype, 1, r) };
    tensors[`t.${dtype}.empty`] = { dtype, shape: [0, 3], data: allocStorageArray(dtype, 0) };
  }
  const metadata = { format: 'pt', note: 'ünïcödé ✓ "quoted"\n', '0': 'integer-like key' };

  function check(f: ReturnType<typeof readSafetensors>) {
    expect(f.metadata).toEqual(metadata);
    expect(f.names()).toEqual(Object.keys(tensors).sort());
    for (const [name, t] of Object.entries(tensors)) {
      const got = f.get(name);
      expect(got.dtype).toBe(t.dtype);
      expect(got.shape).toEqual(t.shape);
      expect(got.data.constructor).toBe(t.data.constructor);
      expect(hex(bytesOf(got.data))).toBe(hex(bytesOf(t.data)));
      const info = f.info(name);
      expect(info.dtype).toBe(t.dtype);
      expect(info.byteLength).toBe(t.data.byteLength);
      // the writer aligns every tensor to its element size
      expect(info.fileOffset % t.data.BYTES_PER_ELEMENT).toBe(0);
    }
  }

  it('every core dtype through serializeSafetensors / readSafetensors(bytes)', () => {
    const bytes = serializeSafetensors(tensors, metadata);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect((8 + n) % 8).toBe(0);
    expectSameBits(serializeSafetensors(tensors, metadata), bytes, 'serialized'); // deterministic
    check(readSafetensors(bytes));
  });

  it('every core dtype through writeSafetensors / readSafetensors(path)', () => {
    const p = tmpFile();
    writeSafetensors(p, tensors, metadata);
    expectSameBits(new Uint8Array(fs.readFileSync(p)), serializeSafetensors(tensors, metadata), 'file bytes');
    const f = readSafetensors(p);
    check(f);
    f.close();
    expect(() => f.get('t.f32')).toThrow(/closed/);
  });

  it('also reads from a Node Buffer and an ArrayBuffer without aliasing the input', () => {
    const bytes = serializeSafetensors({ a: { dtype: 'f32', shape: [2], data: new Float32Array([1, 2]) } });
    const buf = Buffer.from(bytes);
    const got = readSafetensors(buf).get('a').data;
    expect(Array.from(got)).toEqual([1, 2]);
    buf.fill(0);
    expect(Array.from(got)).toEqual([1, 2]);
    expect(Array.from(readSafetensors(bytes.slice().buffer).get('a').data)).toEqual([1, 2]);
  });

  it('writes no __metadata__ when none is given, and an empty file when there are no tensors', () => {
    const bytes = serializeSafetensors({});
    expect(Buffer.from(bytes).toString('latin1')).toBe('\x08\0\0\0\0\0\0\0{}      ');
    const f = readSafetensors(bytes);
    expect(f.names()).toEqual([]);
    expect(f.metadata).toEqual({});
  });

  it('reads tensor data on demand with positioned reads (not at open)', () => {
    const p = tmpFile();
    writeSafetensors(p, { a: { dtype: 'u8', shape: [4], data: new Uint8Array([1, 2, 3, 4]) } });
    const f = readSafetensors(p);
    const fd = fs.openSync(p, 'r+');
    fs.writeSync(fd, new Uint8Array([9, 9]), 0, 2, f.info('a').fileOffset + 1);
    fs.closeSync(fd);
    expect(Array.from(f.get('a').data)).toEqual([1, 9, 9, 4]);
    f.close();
  });
});

describe('dtypes core lacks (I64, I16, I8, U16, U64)', () => {
  const raw = (
    stDtype: SafetensorsRawTensor['stDtype'],
    a: ArrayBufferView,
    shape = [(a as Uint8Array).length],
  ): SafetensorsRawTensor => ({
    stDtype,
    shape,
    bytes: new Uint8Array(bytesOf(a)),
  });

  it('are readable as raw entries and convertible to i32', () => {
    const tensors: Record<string, SafetensorsWritable> = {
      i64: raw('I64', new BigInt64Array([0n, -1n, 2147483647n, -2147483648n])),
      i16: raw('I16', new Int16Array([1, -2, 32767, -32768])),
      i8: raw('I8', new Int8Array([1, -2, 127, -128])),
      u16: raw('U16', new Uint16Array([1, 2, 65535, 40000])),
      u64: raw('U64', new BigUint64Array([0n, 1n, 2147483647n])),
      f32: { dtype: 'f32', shape: [1], data: new Float32Array([1]) },
    };
    const f = readSafetensors(serializeSafetensors(tensors));
    expect(f.info('i64')).toMatchObject({ dtype: 'I64', stDtype: 'I64', shape: [4], byteLength: 32 });
    expect(f.info('f32')).toMatchObject({ dtype: 'f32', stDtype: 'F32' });
    expect(hex(f.getRaw('i16').bytes)).toBe(hex((tensors.i16 as SafetensorsRawTensor).bytes));
    expect(() => f.get('i16')).toThrow(/tensor "i16": dtype I16 has no core dtype; use getRaw\(name\).*getI32/);
    expect(Array.from(f.getI32('i64').data)).toEqual([0, -1, 2147483647, -2147483648]);
    expect(Array.from(f.getI32('i16').data)).toEqual([1, -2, 32767, -32768]);
    expect(Array.from(f.getI32('i8').data)).toEqual([1, -2, 127, -128]);
    expect(Array.from(f.getI32('u16').data)).toEqual([1, 2, 65535, 40000]);
    expect(Array.from(f.getI32('u64').data)).toEqual([0, 1, 2147483647]);
    expect(f.getI32('i16')).toMatchObject({ dtype: 'i32', shape: [4] });
  });

  it('range-checks the i32 conversion with a clear error', () => {
    const f = readSafetensors(
      serializeSafetensors({
        big: raw('I64', new BigInt64Array([1n, -2147483649n])),
        ubig: raw('U64', new BigUint64Array([2n ** 63n])),
        u32: raw('U32', new Uint32Array([5, 2147483648])),
        f: { dtype: 'f32', shape: [1], data: new Float32Array([1]) },
      }),
    );
    expect(() => f.getI32('big')).toThrow(/tensor "big": element 1 of I64 = -2147483649 is outside the i32 range/);
    expect(() => f.getI32('ubig')).toThrow(/element 0 of U64 = 9223372036854775808 is outside the i32 range/);
    expect(() => f.getI32('u32')).toThrow(/element 1 of U32 = 2147483648/);
    expect(() => f.getI32('f')).toThrow(/F32 is not an integer dtype/);
    expect(() => rawToI32({ stDtype: 'I16', shape: [1], bytes: new Uint8Array(3) }, 'x')).toThrow(
      /not a whole number of I16/,
    );
  });
});

describe('the reference Python safetensors library', () => {
  const expected = JSON.parse(fs.readFileSync(path.join(FIX, 'st-ref.expected.json'), 'utf8')) as {
    header: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>;
    tensors: Record<string, { shape: number[]; hex: string; values: (number | string)[] }>;
  };
  const file = path.join(FIX, 'st-ref.safetensors');
  const num = (v: number | string) =>
    v === 'nan' ? NaN : v === 'inf' ? Infinity : v === '-inf' ? -Infinity : Number(v);

  it('reads every dtype and value of a file it wrote exactly', () => {
    const f = readSafetensors(file);
    expect(f.metadata).toEqual({ format: 'pt' });
    expect(f.names()).toEqual(Object.keys(expected.tensors).sort());
    for (const [name, exp] of Object.entries(expected.tensors)) {
      const info = f.info(name);
      const hdr = expected.header[name]!;
      expect(info.stDtype).toBe(hdr.dtype);
      expect(info.shape).toEqual(exp.shape);
      expect(info.dataOffsets).toEqual(hdr.data_offsets);
      const raw = f.getRaw(name);
      expect(hex(raw.bytes)).toBe(exp.hex);
      let values: number[] | bigint[];
      switch (info.stDtype) {
        case 'I64':
          values = Array.from(new BigInt64Array(raw.bytes.buffer));
          expect(values).toEqual(exp.values.map((v) => BigInt(v)));
          continue;
        case 'U64':
          values = Array.from(new BigUint64Array(raw.bytes.buffer));
          expect(values).toEqual(exp.values.map((v) => BigInt(v)));
          continue;
        case 'I16':
        case 'I8':
        case 'U16':
          values = Array.from(f.getI32(name).data);
          break;
        case 'F16':
          values = Array.from(decodeF16(f.get(name).data as Uint16Array));
          break;
        case 'BF16':
          values = Array.from(decodeBf16(f.get(name).data as Uint16Array));
          break;
        case 'F8_E4M3':
        case 'F8_E5M2':
          // core has no fp8 decoder; the bytes were compared above
          expect(f.get(name).data).toBeInstanceOf(Uint8Array);
          continue;
        default:
          values = Array.from(f.get(name).data);
      }
      expect(values, name).toEqual(exp.values.map(num));
    }
  });

  it('our writer reproduces its file byte for byte', () => {
    const f = readSafetensors(file);
    const tensors: Record<string, SafetensorsWritable> = {};
    for (const name of f.names())
      tensors[name] =
        f.info(name).stDtype.startsWith('I') || f.info(name).stDtype === 'U16' || f.info(name).stDtype === 'U64'
          ? f.getRaw(name)
          : f.get(name);
    expect(hex(serializeSafetensors(tensors, { ...f.metadata }))).toBe(hex(new Uint8Array(fs.readFileSync(file))));
  });
});

describe('corrupt files produce clear errors', () => {
  const f32 = (shape: number[], offs: number[]) => ({ dtype: 'F32', shape, data_offsets: offs });

  it('file shorter than 8 bytes', () => {
    expect(errorOf(new Uint8Array(5))).toMatch(/file is 5 bytes, shorter than the 8-byte header length prefix/);
  });
  it('header length beyond the file', () => {
    expect(errorOf(craft({}, 0, 1000))).toMatch(/header length 1000 bytes runs past the end of the file \(10 bytes/);
  });
  it('header over 100 MB', () => {
    expect(errorOf(craft({}, 0, 200_000_000))).toMatch(
      /header length 200000000 bytes exceeds the limit of 100000000 bytes/,
    );
    const huge = new Uint8Array(16);
    new DataView(huge.buffer).setBigUint64(0, 2n ** 64n - 1n, true);
    expect(errorOf(huge)).toMatch(/header length 18446744073709551615 bytes exceeds the limit/);
  });
  it('header not UTF-8, not JSON, not an object', () => {
    const notUtf8 = craft('{"ab":1}');
    notUtf8[10] = 0xff; // the "a"
    expect(errorOf(notUtf8)).toMatch(/header is not valid UTF-8/);
    expect(errorOf(craft('{"a": '))).toMatch(/header is not valid JSON .*header starts with "\{\\"a\\": "/);
    expect(errorOf(craft('[1, 2]'))).toMatch(/header JSON is an array; expected an object/);
    expect(errorOf(craft('null'))).toMatch(/header JSON is null; expected an object/);
    expect(errorOf(craft({ __metadata__: { a: 1 } }))).toMatch(/__metadata__\["a"\] is 1; expected a string value/);
  });
  it('entry missing fields or not an object', () => {
    expect(errorOf(craft({ w: { dtype: 'F32', shape: [1] } }, 4))).toMatch(
      /tensor "w": entry is missing data_offsets; expected \{dtype, shape, data_offsets\}/,
    );
    expect(errorOf(craft({ w: { shape: [1] } }, 4))).toMatch(/tensor "w": entry is missing dtype, data_offsets/);
    expect(errorOf(craft({ w: 3 }, 4))).toMatch(/tensor "w": entry is 3; expected an object/);
  });
  it('unknown dtype names the tensor and the dtype', () => {
    expect(errorOf(craft({ 'layer.w': { dtype: 'C64', shape: [1], data_offsets: [0, 8] } }, 8))).toMatch(
      /tensor "layer\.w": unknown dtype "C64"; supported: F64, F32, .*F8_E5M2/,
    );
    expect(errorOf(craft({ w: { dtype: 'f32', shape: [1], data_offsets: [0, 4] } }, 4))).toMatch(/unknown dtype "f32"/);
  });
  it('shape not non-negative integers', () => {
    for (const shape of [[-1], [1.5], '3', [1, null], [2 ** 60]]) {
      expect(errorOf(craft({ w: f32(shape as number[], [0, 4]) }, 4))).toMatch(
        /tensor "w": shape .* is not a list of non-negative integers/,
      );
    }
  });
  it('data_offsets not [begin, end] with begin <= end', () => {
    for (const offs of [[4, 0], [0], 'x', [-1, 3], [0, 4, 8], [0, 4.5]]) {
      expect(errorOf(craft({ w: f32([1], offs as number[]) }, 4))).toMatch(
        /tensor "w": data_offsets .* is not \[begin, end\] with integers 0 <= begin <= end/,
      );
    }
  });
  it('byte length differs from product(shape) x dtype size', () => {
    expect(errorOf(craft({ w: f32([3], [0, 8]) }, 8))).toMatch(
      /tensor "w": data_offsets \[0, 8\] hold 8 bytes, but shape \[3\] of F32 needs 12 bytes \(3 elements x 4 bytes\)/,
    );
    expect(errorOf(craft({ w: f32([2 ** 30, 2 ** 30], [0, 4]) }, 4))).toMatch(/more than 2\^53 elements/);
  });
  it('offsets beyond the data section (truncated file)', () => {
    expect(errorOf(craft({ a: f32([2], [0, 8]), b: f32([2], [8, 16]) }, 12))).toMatch(
      /tensor "b": data_offsets \[8, 16\] run past the end of the data section \(12 bytes .*truncated/,
    );
  });
  it('overlapping tensors', () => {
    expect(errorOf(craft({ a: f32([2], [0, 8]), b: f32([2], [4, 12]) }, 12))).toMatch(
      /tensors "a" \(bytes \[0, 8\)\) and "b" \(bytes \[4, 12\)\) overlap/,
    );
    expect(errorOf(craft({ a: f32([2], [0, 8]), b: f32([2], [0, 8]) }, 8))).toMatch(/overlap/);
  });
  it('gaps and trailing bytes (rejected unless allowGaps)', () => {
    const gap = craft({ a: f32([1], [0, 4]), b: f32([1], [8, 12]) }, 12);
    expect(errorOf(gap)).toMatch(/4 unused bytes \[4, 8\) before tensor "b"; expected tensors to be contiguous/);
    expect(Array.from(readSafetensors(gap, { allowGaps: true }).get('b').data)).toEqual([0]);
    const trailing = craft({ a: f32([1], [0, 4]) }, 6);
    expect(errorOf(trailing)).toMatch(/2 unused bytes after the last tensor/);
    expect(readSafetensors(trailing, { allowGaps: true }).names()).toEqual(['a']);
  });
  it('zero-size tensors and a missing file', () => {
    const f = readSafetensors(craft({ e: f32([0, 5], [4, 4]), a: f32([1], [0, 4]) }, 4));
    expect(f.get('e')).toMatchObject({ shape: [0, 5] });
    expect(() => f.get('nope')).toThrow(/tensor "nope": no such tensor \(the file has 2: "a", "e"\)/);
    expect(() => readSafetensors(path.join(tmpRoot(), 'missing.safetensors'))).toThrow(
      /missing\.safetensors: cannot open: ENOENT/,
    );
    expect(() => readSafetensors(tmpRoot())).toThrow(/not a regular file/);
  });
});

describe('writer validation and atomic writes', () => {
  const good = { w: { dtype: 'f32', shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) } } as const;

  it('rejects bad tensors with clear errors', () => {
    const bad = (t: unknown, md?: unknown) => () =>
      serializeSafetensors(t as Record<string, SafetensorsWritable>, md as Record<string, string>);
    expect(bad({ w: { dtype: 'f32', shape: [3], data: new Float32Array(2) } })).toThrow(
      /tensor "w": data has 2 elements, but shape \[3\] needs 3/,
    );
    expect(bad({ w: { dtype: 'bf16', shape: [2], data: new Float32Array(2) } })).toThrow(
      /tensor "w": data is a Float32Array, which is not the storage array of dtype bf16/,
    );
    expect(bad({ w: { dtype: 'f8', shape: [2], data: new Uint8Array(2) } })).toThrow(/unknown dtype "f8"/);
    expect(bad({ w: { dtype: 'f32', shape: [-2], data: new Float32Array(2) } })).toThrow(/shape \[-2\] is not a list/);
    expect(bad({ w: { stDtype: 'I64', shape: [2], bytes: new Uint8Array(8) } })).toThrow(
      /has 8 bytes, but shape \[2\] of I64 needs 16 bytes/,
    );
    expect(bad({ __metadata__: good.w })).toThrow(/reserved/);
    expect(bad(good, { n: 3 })).toThrow(/metadata\["n"\] is 3; safetensors metadata values must be strings/);
  });

  it('replaces the file atomically and leaves no temp files', () => {
    const dir = tmpDir();
    const p = path.join(dir, 'model.safetensors');
    writeSafetensors(p, good);
    const before = fs.readFileSync(p);
    // a serialization error: nothing is written, the old file stays
    expect(() => writeSafetensors(p, { w: { dtype: 'f32', shape: [5], data: new Float32Array(4) } })).toThrow(
      /data has 4 elements/,
    );
    expect(fs.readFileSync(p).equals(before)).toBe(true);
    expect(fs.readdirSync(dir)).toEqual(['model.safetensors']);
    // a success replaces it
    writeSafetensors(p, { v: { dtype: 'u8', shape: [1], data: new Uint8Array([7]) } });
    expect(readSafetensors(p).names()).toEqual(['v']);
    expect(fs.readdirSync(dir)).toEqual(['model.safetensors']);
  });

  it('removes the temp file when the final rename fails', () => {
    const dir = tmpDir();
    const target = path.join(dir, 'target');
    fs.mkdirSync(target);
    fs.writeFileSync(path.join(target, 'keep'), 'x');
    expect(() => writeSafetensors(target, good)).toThrow(/writing failed, file left unchanged/);
    expect(fs.readdirSync(dir)).toEqual(['target']);
    expect(fs.readdirSync(target)).toEqual(['keep']);
    expect(() => writeSafetensors(path.join(dir, 'no/such/dir/x.safetensors'), good)).toThrow(/writing failed.*ENOENT/);
    expect(fs.readdirSync(dir)).toEqual(['target']);
  });
});
