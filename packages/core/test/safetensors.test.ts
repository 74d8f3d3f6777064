import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DType, StorageArray } from '../src/dtype';
import { DTYPES, allocStorageArray, decodeBf16, decodeF16, f32ToBf16Bits } from '../src/dtype';
import type { SafetensorsRawTensor, SafetensorsTensor, SafetensorsWritable } from '../src/io';
import {
  SHARD_INDEX_FILE,
  SafetensorsError,
  rawToI32,
  readSafetensors,
  readShardedCheckpoint,
  serializeSafetensors,
  writeSafetensors,
  writeShardedCheckpoint,
} from '../src/io';

const FIX = fileURLToPath(new URL('./fixtures/', import.meta.url));
let tmp = '';
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dsv3-st-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});
let counter = 0;
const tmpFile = (name = 'x.safetensors') => path.join(tmp, `${counter++}-${name}`);
const tmpDir = () => {
  const d = path.join(tmp, `d${counter++}`);
  fs.mkdirSync(d);
  return d;
};

// deterministic PRNG (mulberry32)
function rng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Random non-zero storage of a core dtype. */
function randomStorage(dtype: DType, n: number, r: () => number): StorageArray {
  const a = allocStorageArray(dtype, n);
  for (let i = 0; i < n; i++) {
    switch (dtype) {
      case 'f32':
      case 'f64':
        a[i] = (r() - 0.5) * 1e3 || 1.5;
        break;
      case 'f16':
      case 'bf16':
        a[i] = 1 + Math.floor(r() * 0xfffe);
        break;
      case 'i32':
        a[i] = (Math.floor(r() * 0xfffffffe) + 1) | 0;
        break;
      case 'u32':
        a[i] = Math.floor(r() * 0xfffffffe) + 1;
        break;
      case 'bool':
        a[i] = i % 3 === 1 ? 0 : 1;
        break;
      default:
        a[i] = 1 + Math.floor(r() * 254);
    }
  }
  return a;
}

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

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
    expect(serializeSafetensors(tensors, metadata)).toEqual(bytes); // deterministic
    check(readSafetensors(bytes));
  });

  it('every core dtype through writeSafetensors / readSafetensors(path)', () => {
    const p = tmpFile();
    writeSafetensors(p, tensors, metadata);
    expect(new Uint8Array(fs.readFileSync(p))).toEqual(serializeSafetensors(tensors, metadata));
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
  const raw = (stDtype: SafetensorsRawTensor['stDtype'], a: ArrayBufferView, shape = [(a as Uint8Array).length]): SafetensorsRawTensor => ({
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
    expect(() => rawToI32({ stDtype: 'I16', shape: [1], bytes: new Uint8Array(3) }, 'x')).toThrow(/not a whole number of I16/);
  });
});

describe('the reference Python safetensors library', () => {
  const expected = JSON.parse(fs.readFileSync(path.join(FIX, 'st-ref.expected.json'), 'utf8')) as {
    header: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>;
    tensors: Record<string, { shape: number[]; hex: string; values: (number | string)[] }>;
  };
  const file = path.join(FIX, 'st-ref.safetensors');
  const num = (v: number | string) => (v === 'nan' ? NaN : v === 'inf' ? Infinity : v === '-inf' ? -Infinity : Number(v));

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
    for (const name of f.names()) tensors[name] = f.info(name).stDtype.startsWith('I') || f.info(name).stDtype === 'U16' || f.info(name).stDtype === 'U64' ? f.getRaw(name) : f.get(name);
    expect(hex(serializeSafetensors(tensors, { ...f.metadata }))).toBe(hex(new Uint8Array(fs.readFileSync(file))));
  });
});

// ---- the project's reference fixtures ----

interface V3Config {
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  moe_intermediate_size: number;
  num_hidden_layers: number;
  first_k_dense_replace: number;
  num_attention_heads: number;
  n_shared_experts: number;
  n_routed_experts: number;
  q_lora_rank: number;
  kv_lora_rank: number;
  qk_nope_head_dim: number;
  qk_rope_head_dim: number;
  v_head_dim: number;
  num_nextn_predict_layers: number;
}

/** Every tensor of a DeepSeek-V3 checkpoint (Hugging Face names) with its shape, derived from config.json. */
function expectedV3Tensors(c: V3Config): Map<string, number[]> {
  const H = c.hidden_size;
  const nh = c.num_attention_heads;
  const m = new Map<string, number[]>([
    ['model.embed_tokens.weight', [c.vocab_size, H]],
    ['model.norm.weight', [H]],
    ['lm_head.weight', [c.vocab_size, H]],
  ]);
  const mlp = (p: string, inter: number) => {
    m.set(`${p}.gate_proj.weight`, [inter, H]);
    m.set(`${p}.up_proj.weight`, [inter, H]);
    m.set(`${p}.down_proj.weight`, [H, inter]);
  };
  for (let l = 0; l < c.num_hidden_layers + c.num_nextn_predict_layers; l++) {
    const p = `model.layers.${l}`;
    m.set(`${p}.input_layernorm.weight`, [H]);
    m.set(`${p}.post_attention_layernorm.weight`, [H]);
    m.set(`${p}.self_attn.q_a_proj.weight`, [c.q_lora_rank, H]);
    m.set(`${p}.self_attn.q_a_layernorm.weight`, [c.q_lora_rank]);
    m.set(`${p}.self_attn.q_b_proj.weight`, [nh * (c.qk_nope_head_dim + c.qk_rope_head_dim), c.q_lora_rank]);
    m.set(`${p}.self_attn.kv_a_proj_with_mqa.weight`, [c.kv_lora_rank + c.qk_rope_head_dim, H]);
    m.set(`${p}.self_attn.kv_a_layernorm.weight`, [c.kv_lora_rank]);
    m.set(`${p}.self_attn.kv_b_proj.weight`, [nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank]);
    m.set(`${p}.self_attn.o_proj.weight`, [H, nh * c.v_head_dim]);
    if (l < c.first_k_dense_replace) {
      mlp(`${p}.mlp`, c.intermediate_size);
    } else {
      m.set(`${p}.mlp.gate.weight`, [c.n_routed_experts, H]);
      m.set(`${p}.mlp.gate.e_score_correction_bias`, [c.n_routed_experts]);
      for (let e = 0; e < c.n_routed_experts; e++) mlp(`${p}.mlp.experts.${e}`, c.moe_intermediate_size);
      mlp(`${p}.mlp.shared_experts`, c.moe_intermediate_size * c.n_shared_experts);
    }
    if (l >= c.num_hidden_layers) {
      m.set(`${p}.enorm.weight`, [H]);
      m.set(`${p}.hnorm.weight`, [H]);
      m.set(`${p}.eh_proj.weight`, [H, 2 * H]);
      m.set(`${p}.embed_tokens.weight`, [c.vocab_size, H]);
      m.set(`${p}.shared_head.norm.weight`, [H]);
      m.set(`${p}.shared_head.head.weight`, [c.vocab_size, H]);
    }
  }
  return m;
}

const isQuantized = (name: string) => /\.(self_attn\.(q_a|q_b|kv_a|kv_b|o)_proj|mlp\.(experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj|kv_a_proj_with_mqa)\.weight$/.test(name);

describe('fixtures', () => {
  const config = JSON.parse(fs.readFileSync(path.join(FIX, 'tiny-v3/config.json'), 'utf8')) as V3Config;
  const expectedTensors = expectedV3Tensors(config);

  it('tiny-v3: BF16 tensors under the Hugging Face names, shapes as config.json implies', () => {
    const f = readSafetensors(path.join(FIX, 'tiny-v3/model.safetensors'));
    expect(f.metadata).toEqual({ format: 'pt' });
    expect(f.names()).toEqual([...expectedTensors.keys()].sort());
    expect(f.names()).toHaveLength(269);
    for (const [name, shape] of expectedTensors) {
      expect(f.info(name), name).toMatchObject({ dtype: 'bf16', stDtype: 'BF16', shape });
    }
    const q = f.get('model.layers.0.self_attn.q_a_proj.weight');
    expect(q).toMatchObject({ dtype: 'bf16', shape: [config.q_lora_rank, config.hidden_size] });
    expect(q.data).toBeInstanceOf(Uint16Array);
    const v = decodeBf16(q.data as Uint16Array);
    expect(v.every(Number.isFinite)).toBe(true);
    expect(v.some((x) => x !== 0)).toBe(true);
    f.close();
  });

  it('tiny-v3-fp8: F8_E4M3 weights with F32 128x128 block scales that dequantize to the BF16 weights', () => {
    const f = readSafetensors(path.join(FIX, 'tiny-v3-fp8/model.safetensors'));
    const bf = readSafetensors(path.join(FIX, 'tiny-v3/model.safetensors'));
    const goldens = readSafetensors(path.join(FIX, 'fp8-goldens.safetensors'));
    const e4m3 = goldens.get('fp8.e4m3.decode').data as Float32Array; // value of every byte, from torch
    const names = new Set(f.names());
    let quantized = 0;
    for (const [name, shape] of expectedTensors) {
      const scaleName = `${name}_scale_inv`;
      if (!isQuantized(name)) {
        expect(f.info(name), name).toMatchObject({ dtype: 'bf16', shape });
        expect(names.has(scaleName)).toBe(false);
        continue;
      }
      quantized++;
      const [out, inp] = shape as [number, number];
      expect(f.info(name), name).toMatchObject({ dtype: 'fp8-e4m3', stDtype: 'F8_E4M3', shape });
      expect(f.info(scaleName), scaleName).toMatchObject({ dtype: 'f32', shape: [Math.ceil(out / 128), Math.ceil(inp / 128)] });
      // dequantized = fp8 value x scale of its 128x128 block ≈ the BF16 weight
      const w = f.get(name).data as Uint8Array;
      const s = f.get(scaleName).data as Float32Array;
      const ref = decodeBf16(bf.get(name).data as Uint16Array);
      const sb = Math.ceil(inp / 128);
      let err = 0;
      let norm = 0;
      for (let i = 0; i < out; i++) {
        for (let j = 0; j < inp; j++) {
          const d = e4m3[w[i * inp + j]!]! * s[Math.floor(i / 128) * sb + Math.floor(j / 128)]!;
          err += (d - ref[i * inp + j]!) ** 2;
          norm += ref[i * inp + j]! ** 2;
        }
      }
      expect(Math.sqrt(err / norm), name).toBeLessThan(0.05);
    }
    expect(quantized).toBe(232);
    expect(names.size).toBe(expectedTensors.size + quantized);
    for (const g of [f, bf, goldens]) g.close();
  });

  it('fp8-goldens: F32, U8 and I16 tensors; bf16.encode.y (I16) usable through getI32', () => {
    const f = readSafetensors(path.join(FIX, 'fp8-goldens.safetensors'));
    const counts: Record<string, number> = {};
    for (const n of f.names()) counts[f.info(n).stDtype] = (counts[f.info(n).stDtype] ?? 0) + 1;
    expect(counts).toEqual({ F32: 20, U8: 8, I16: 1 });
    expect(f.info('bf16.encode.y')).toMatchObject({ dtype: 'I16', stDtype: 'I16', shape: [10240] });
    expect(f.info('fp8.e4m3.decode')).toMatchObject({ dtype: 'f32', shape: [256] });
    expect(f.info('k.act_quant.y')).toMatchObject({ dtype: 'u8', shape: [64, 512] });
    const x = f.get('bf16.encode.x').data as Float32Array;
    const y = f.getI32('bf16.encode.y').data;
    expect(y.length).toBe(x.length);
    let mismatches = 0;
    for (let i = 0; i < x.length; i++) if ((y[i]! & 0xffff) !== f32ToBf16Bits(x[i]!)) mismatches++;
    expect(mismatches).toBe(0);
    f.close();
  });

  it('re-serializing each fixture reproduces its layout (and the model files byte for byte)', () => {
    for (const rel of ['tiny-v3/model.safetensors', 'tiny-v3-fp8/model.safetensors', 'fp8-goldens.safetensors']) {
      const p = path.join(FIX, rel);
      const f = readSafetensors(p);
      const tensors: Record<string, SafetensorsWritable> = {};
      for (const n of f.names()) tensors[n] = f.getRaw(n);
      const ours = readSafetensors(serializeSafetensors(tensors, { ...f.metadata }));
      for (const n of f.names()) expect(ours.info(n).dataOffsets, `${rel}: ${n}`).toEqual(f.info(n).dataOffsets);
      const file = fs.readFileSync(p);
      const oursBytes = Buffer.from(serializeSafetensors(tensors, { ...f.metadata }));
      expect(Buffer.compare(oursBytes.subarray(ours.dataStart), file.subarray(f.dataStart)), rel).toBe(0);
      // the model files come from the Python library's writer; fp8-goldens' header was written by other code
      // (spaced JSON, __metadata__ last), so only its data section is expected to match
      if (rel.includes('model')) expect(Buffer.compare(oursBytes, file), rel).toBe(0);
      f.close();
    }
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
    expect(errorOf(craft({}, 0, 200_000_000))).toMatch(/header length 200000000 bytes exceeds the limit of 100000000 bytes/);
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
    expect(errorOf(craft({ w: { dtype: 'F32', shape: [1] } }, 4))).toMatch(/tensor "w": entry is missing data_offsets; expected \{dtype, shape, data_offsets\}/);
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
      expect(errorOf(craft({ w: f32(shape as number[], [0, 4]) }, 4))).toMatch(/tensor "w": shape .* is not a list of non-negative integers/);
    }
  });
  it('data_offsets not [begin, end] with begin <= end', () => {
    for (const offs of [[4, 0], [0], 'x', [-1, 3], [0, 4, 8], [0, 4.5]]) {
      expect(errorOf(craft({ w: f32([1], offs as number[]) }, 4))).toMatch(/tensor "w": data_offsets .* is not \[begin, end\] with integers 0 <= begin <= end/);
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
    expect(() => readSafetensors(path.join(tmp, 'missing.safetensors'))).toThrow(/missing\.safetensors: cannot open: ENOENT/);
    expect(() => readSafetensors(tmp)).toThrow(/not a regular file/);
  });
});

describe('writer validation and atomic writes', () => {
  const good = { w: { dtype: 'f32', shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) } } as const;

  it('rejects bad tensors with clear errors', () => {
    const bad = (t: unknown, md?: unknown) => () => serializeSafetensors(t as Record<string, SafetensorsWritable>, md as Record<string, string>);
    expect(bad({ w: { dtype: 'f32', shape: [3], data: new Float32Array(2) } })).toThrow(/tensor "w": data has 2 elements, but shape \[3\] needs 3/);
    expect(bad({ w: { dtype: 'bf16', shape: [2], data: new Float32Array(2) } })).toThrow(/tensor "w": data is a Float32Array, which is not the storage array of dtype bf16/);
    expect(bad({ w: { dtype: 'f8', shape: [2], data: new Uint8Array(2) } })).toThrow(/unknown dtype "f8"/);
    expect(bad({ w: { dtype: 'f32', shape: [-2], data: new Float32Array(2) } })).toThrow(/shape \[-2\] is not a list/);
    expect(bad({ w: { stDtype: 'I64', shape: [2], bytes: new Uint8Array(8) } })).toThrow(/has 8 bytes, but shape \[2\] of I64 needs 16 bytes/);
    expect(bad({ __metadata__: good.w })).toThrow(/reserved/);
    expect(bad(good, { n: 3 })).toThrow(/metadata\["n"\] is 3; safetensors metadata values must be strings/);
  });

  it('replaces the file atomically and leaves no temp files', () => {
    const dir = tmpDir();
    const p = path.join(dir, 'model.safetensors');
    writeSafetensors(p, good);
    const before = fs.readFileSync(p);
    // a serialization error: nothing is written, the old file stays
    expect(() => writeSafetensors(p, { w: { dtype: 'f32', shape: [5], data: new Float32Array(4) } })).toThrow(/data has 4 elements/);
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

describe('sharded checkpoints', () => {
  const r = rng(7);
  const tensors: Record<string, SafetensorsWritable> = {};
  const dtypes: DType[] = ['f32', 'bf16', 'fp8-e4m3', 'i32', 'f64', 'u8'];
  for (let i = 0; i < 30; i++) {
    const dtype = dtypes[i % dtypes.length]!;
    tensors[`model.layers.${i}.w`] = { dtype, shape: [4, 8], data: randomStorage(dtype, 32, r) };
  }
  tensors['model.big'] = { dtype: 'f32', shape: [1000], data: randomStorage('f32', 1000, r) }; // larger than a shard
  tensors['raw.i64'] = { stDtype: 'I64', shape: [3], bytes: bytesOf(new BigInt64Array([1n, -5n, 9n])) };
  const byteSize = (t: SafetensorsWritable) => ('bytes' in t ? t.bytes.byteLength : t.data.byteLength);
  const total = Object.values(tensors).reduce((s, t) => s + byteSize(t), 0);

  it('write -> read round trip over >= 3 shards', () => {
    const dir = path.join(tmpDir(), 'ckpt'); // created by the writer
    const res = writeShardedCheckpoint(dir, tensors, { maxShardBytes: 600, metadata: { note: 'test' } });
    expect(res.files.length).toBeGreaterThanOrEqual(3);
    expect(res.files[0]).toBe(`model-00001-of-${String(res.files.length).padStart(5, '0')}.safetensors`);
    expect(res.totalSize).toBe(total);
    expect(fs.readdirSync(dir).sort()).toEqual([...res.files, SHARD_INDEX_FILE].sort());

    const index = JSON.parse(fs.readFileSync(path.join(dir, SHARD_INDEX_FILE), 'utf8'));
    expect(index.metadata).toEqual({ note: 'test', total_size: total });
    expect(Object.keys(index.weight_map)).toEqual(Object.keys(tensors).sort());
    for (const file of res.files) {
      const s = readSafetensors(path.join(dir, file));
      expect(s.metadata).toEqual({ format: 'pt' });
      const bytes = s.names().reduce((acc, n) => acc + s.info(n).byteLength, 0);
      expect(bytes <= 600 || s.names().length === 1).toBe(true);
      s.close();
    }

    const ck = readShardedCheckpoint(dir);
    expect(ck.metadata).toEqual({ note: 'test', total_size: total });
    expect(ck.names()).toEqual(Object.keys(tensors).sort());
    expect(ck.files()).toEqual(res.files);
    for (const [name, t] of Object.entries(tensors)) {
      expect(ck.info(name).file).toBe(index.weight_map[name]);
      if ('bytes' in t) {
        expect(hex(ck.getRaw(name).bytes)).toBe(hex(t.bytes));
        expect(Array.from(ck.getI32(name).data)).toEqual([1, -5, 9]);
      } else {
        const got = ck.get(name);
        expect(got.dtype).toBe(t.dtype);
        expect(got.shape).toEqual(t.shape);
        expect(hex(bytesOf(got.data))).toBe(hex(bytesOf(t.data)));
      }
    }
    expect(() => ck.get('nope')).toThrow(/tensor "nope": no such tensor in the checkpoint/);
    ck.close();
    expect(() => ck.get('model.big')).toThrow(/closed/);
    // the index file itself can be given
    const ck2 = readShardedCheckpoint(path.join(dir, SHARD_INDEX_FILE));
    expect(ck2.names()).toHaveLength(Object.keys(tensors).length);
    ck2.close();
  });

  it('writes nothing when a tensor is invalid', () => {
    const dir = tmpDir();
    const bad = { ...tensors, 'z.bad': { dtype: 'f32', shape: [9], data: new Float32Array(3) } } as Record<string, SafetensorsWritable>;
    expect(() => writeShardedCheckpoint(dir, bad, { maxShardBytes: 600 })).toThrow(/tensor "z\.bad": data has 3 elements/);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('falls back to a single model.safetensors', () => {
    const ck = readShardedCheckpoint(path.join(FIX, 'tiny-v3'));
    expect(ck.files()).toEqual(['model.safetensors']);
    expect(ck.indexPath).toBeUndefined();
    expect(ck.metadata).toEqual({ format: 'pt' });
    expect(ck.names()).toHaveLength(269);
    expect(ck.info('model.layers.0.self_attn.q_a_proj.weight')).toMatchObject({ dtype: 'bf16', shape: [128, 128], file: 'model.safetensors' });
    ck.close();
  });

  describe('validation', () => {
    const a = { dtype: 'f32', shape: [1], data: new Float32Array([1]) } as const;
    function ckpt(shards: Record<string, Record<string, SafetensorsWritable>>, weightMap: unknown): string {
      const dir = tmpDir();
      for (const [file, t] of Object.entries(shards)) writeSafetensors(path.join(dir, file), t);
      fs.writeFileSync(path.join(dir, SHARD_INDEX_FILE), typeof weightMap === 'string' ? weightMap : JSON.stringify({ metadata: {}, weight_map: weightMap }));
      return dir;
    }

    it('weight_map pointing to a missing file', () => {
      const dir = ckpt({ 's1.safetensors': { a } }, { a: 's1.safetensors', b: 's2.safetensors' });
      expect(() => readShardedCheckpoint(dir)).toThrow(/index\.json: tensor "b": weight_map maps this tensor to "s2\.safetensors", which does not exist/);
    });
    it('a tensor not in the shard it is mapped to', () => {
      const dir = ckpt({ 's1.safetensors': { a }, 's2.safetensors': { b: a } }, { a: 's1.safetensors', b: 's1.safetensors' });
      expect(() => readShardedCheckpoint(dir)).toThrow(/tensor "b": weight_map maps this tensor to "s1\.safetensors", but that shard has no such tensor/);
      const dir2 = ckpt({ 's1.safetensors': { a }, 's2.safetensors': { b: a } }, { a: 's1.safetensors', b: 's2.safetensors', c: 's2.safetensors' });
      expect(() => readShardedCheckpoint(dir2)).toThrow(/tensor "c": .*no such tensor/);
    });
    it('the same tensor in two shards', () => {
      const dir = ckpt({ 's1.safetensors': { a }, 's2.safetensors': { a, b: a } }, { a: 's1.safetensors', b: 's2.safetensors' });
      expect(() => readShardedCheckpoint(dir)).toThrow(/tensor "a": appears in two shards, "s1\.safetensors" and "s2\.safetensors"/);
    });
    it('a bad index', () => {
      expect(() => readShardedCheckpoint(ckpt({}, '{"weight_map": '))).toThrow(/cannot read the index as JSON/);
      expect(() => readShardedCheckpoint(ckpt({}, '{"metadata": {}}'))).toThrow(/"weight_map" object/);
      expect(() => readShardedCheckpoint(ckpt({}, { a: 3 }))).toThrow(/tensor "a": weight_map value is 3/);
      expect(() => readShardedCheckpoint(ckpt({}, { a: '../x.safetensors' }))).toThrow(/expected a file name relative to the checkpoint directory/);
      expect(() => readShardedCheckpoint(tmpDir())).toThrow(/neither model\.safetensors\.index\.json nor model\.safetensors/);
      expect(() => readShardedCheckpoint(path.join(tmp, 'nothing-here'))).toThrow(/cannot open checkpoint/);
    });
  });
});
