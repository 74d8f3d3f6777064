import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { DType } from '../src/dtype';
import type { SafetensorsWritable } from '../src/io';
import {
  SHARD_INDEX_FILE,
  readSafetensors,
  readShardedCheckpoint,
  writeSafetensors,
  writeShardedCheckpoint,
} from '../src/io';
import { FIX, bytesOf, hex, randomStorage, rng, tempPaths } from './safetensors-helpers';

const { tmpRoot, tmpDir } = tempPaths();

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
    const bad = { ...tensors, 'z.bad': { dtype: 'f32', shape: [9], data: new Float32Array(3) } } as Record<
      string,
      SafetensorsWritable
    >;
    expect(() => writeShardedCheckpoint(dir, bad, { maxShardBytes: 600 })).toThrow(
      /tensor "z\.bad": data has 3 elements/,
    );
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('falls back to a single model.safetensors', () => {
    const ck = readShardedCheckpoint(path.join(FIX, 'tiny-v3'));
    expect(ck.files()).toEqual(['model.safetensors']);
    expect(ck.indexPath).toBeUndefined();
    expect(ck.metadata).toEqual({ format: 'pt' });
    expect(ck.names()).toHaveLength(269);
    expect(ck.info('model.layers.0.self_attn.q_a_proj.weight')).toMatchObject({
      dtype: 'bf16',
      shape: [128, 128],
      file: 'model.safetensors',
    });
    ck.close();
  });

  describe('validation', () => {
    const a = { dtype: 'f32', shape: [1], data: new Float32Array([1]) } as const;
    function ckpt(shards: Record<string, Record<string, SafetensorsWritable>>, weightMap: unknown): string {
      const dir = tmpDir();
      for (const [file, t] of Object.entries(shards)) writeSafetensors(path.join(dir, file), t);
      fs.writeFileSync(
        path.join(dir, SHARD_INDEX_FILE),
        typeof weightMap === 'string' ? weightMap : JSON.stringify({ metadata: {}, weight_map: weightMap }),
      );
      return dir;
    }

    it('weight_map pointing to a missing file', () => {
      const dir = ckpt({ 's1.safetensors': { a } }, { a: 's1.safetensors', b: 's2.safetensors' });
      expect(() => readShardedCheckpoint(dir)).toThrow(
        /index\.json: tensor "b": weight_map maps this tensor to "s2\.safetensors", which does not exist/,
      );
    });
    it('a tensor not in the shard it is mapped to', () => {
      const dir = ckpt(
        { 's1.safetensors': { a }, 's2.safetensors': { b: a } },
        { a: 's1.safetensors', b: 's1.safetensors' },
      );
      expect(() => readShardedCheckpoint(dir)).toThrow(
        /tensor "b": weight_map maps this tensor to "s1\.safetensors", but that shard has no such tensor/,
      );
      const dir2 = ckpt(
        { 's1.safetensors': { a }, 's2.safetensors': { b: a } },
        { a: 's1.safetensors', b: 's2.safetensors', c: 's2.safetensors' },
      );
      expect(() => readShardedCheckpoint(dir2)).toThrow(/tensor "c": .*no such tensor/);
    });
    it('the same tensor in two shards', () => {
      const dir = ckpt(
        { 's1.safetensors': { a }, 's2.safetensors': { a, b: a } },
        { a: 's1.safetensors', b: 's2.safetensors' },
      );
      expect(() => readShardedCheckpoint(dir)).toThrow(
        /tensor "a": appears in two shards, "s1\.safetensors" and "s2\.safetensors"/,
      );
    });
    it('a bad index', () => {
      expect(() => readShardedCheckpoint(ckpt({}, '{"weight_map": '))).toThrow(/cannot read the index as JSON/);
      expect(() => readShardedCheckpoint(ckpt({}, '{"metadata": {}}'))).toThrow(/"weight_map" object/);
      expect(() => readShardedCheckpoint(ckpt({}, { a: 3 }))).toThrow(/tensor "a": weight_map value is 3/);
      expect(() => readShardedCheckpoint(ckpt({}, { a: '../x.safetensors' }))).toThrow(
        /expected a file name relative to the checkpoint directory/,
      );
      expect(() => readShardedCheckpoint(tmpDir())).toThrow(
        /neither model\.safetensors\.index\.json nor model\.safetensors/,
      );
      expect(() => readShardedCheckpoint(path.join(tmpRoot(), 'nothing-here'))).toThrow(/cannot open checkpoint/);
    });
  });
});
