// readTensorInto / readTensorRowsInto: checkpoint tensors (or whole rows of them) streamed straight into
// existing storage (resident or host).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  cpu,
  decodeBf16,
  encodeBf16,
  readShardedCheckpoint,
  readTensorInto,
  readTensorRowsInto,
  writeSafetensors,
} from '../src/index.js';
import { randomUniform } from '../src/testing.js';

const dir = mkdtempSync(join(tmpdir(), 'dsv3-stream-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('readTensorInto', () => {
  const big = Float32Array.from(randomUniform((1 << 20) + 37, 3)); // more than one conversion chunk
  const bits = encodeBf16(big);
  const small = Float32Array.from(randomUniform(10, 4));
  writeSafetensors(join(dir, 'model.safetensors'), {
    'w.bf16': { dtype: 'bf16', shape: [bits.length], data: bits },
    'w.f32': { dtype: 'f32', shape: [2, 5], data: small },
    'w.i32': { dtype: 'i32', shape: [3], data: new Int32Array([1, 2, 3]) },
  });
  const ckpt = readShardedCheckpoint(dir);

  it('same dtype lands byte for byte, into resident storage too', () => {
    const st = cpu.allocResident('bf16', bits.length);
    readTensorInto(ckpt, 'w.bf16', 'bf16', st.data);
    expect(
      Buffer.compare(Buffer.from(st.data.buffer, st.data.byteOffset, st.data.byteLength), Buffer.from(bits.buffer)),
    ).toBe(0);
    cpu.free(st);
  });

  it('bf16 → f32 decodes exactly across chunks; f32 → bf16 rounds to nearest even', () => {
    const f = new Float32Array(bits.length);
    readTensorInto(ckpt, 'w.bf16', 'f32', f);
    const want = decodeBf16(bits);
    let mismatches = 0;
    for (let i = 0; i < want.length; i++) if (!Object.is(f[i], want[i])) mismatches++;
    expect(mismatches).toBe(0);
    const b = new Uint16Array(10);
    readTensorInto(ckpt, 'w.f32', 'bf16', b);
    expect(Array.from(b)).toEqual(Array.from(encodeBf16(small)));
  });

  it('rejects a wrong destination size or an unsupported conversion with the tensor named', () => {
    expect(() => readTensorInto(ckpt, 'w.f32', 'f32', new Float32Array(9))).toThrow(
      /w\.f32.*holds 9 elements, the tensor has 10/,
    );
    expect(() => readTensorInto(ckpt, 'w.i32', 'f32', new Float32Array(3))).toThrow(/cannot stream i32 into f32/);
    expect(() => readTensorInto(ckpt, 'nope', 'f32', new Float32Array(1))).toThrow(/no such tensor/);
  });
});

describe('readTensorRowsInto', () => {
  // ragged: 300 rows of 4099 (a slab of rows crosses conversion chunks and ends mid-way)
  const rows = 300;
  const width = 4099;
  const values = Float32Array.from(randomUniform(rows * width, 5));
  const bits = encodeBf16(values);
  const sub = mkdtempSync(join(dir, 'rows-'));
  writeSafetensors(join(sub, 'model.safetensors'), {
    'w.bf16': { dtype: 'bf16', shape: [rows, width], data: bits },
    'w.f32': { dtype: 'f32', shape: [rows, width], data: values },
  });
  const ckpt = readShardedCheckpoint(sub);

  it("each slab is those rows of the whole tensor's read, converted or not, the last one short", () => {
    const wholeF32 = new Float32Array(rows * width);
    readTensorInto(ckpt, 'w.bf16', 'f32', wholeF32);
    const wholeBf16 = new Uint16Array(rows * width);
    readTensorInto(ckpt, 'w.f32', 'bf16', wholeBf16);
    for (const slab of [1, 7, 128, 300])
      for (let r = 0; r < rows; r += slab) {
        const n = Math.min(slab, rows - r);
        const f = new Float32Array(n * width);
        readTensorRowsInto(ckpt, 'w.bf16', 'f32', r, f);
        expect(Buffer.from(f.buffer).equals(Buffer.from(wholeF32.buffer, r * width * 4, n * width * 4))).toBe(true);
        const b = new Uint16Array(n * width);
        readTensorRowsInto(ckpt, 'w.f32', 'bf16', r, b);
        expect(Buffer.from(b.buffer).equals(Buffer.from(wholeBf16.buffer, r * width * 2, n * width * 2))).toBe(true);
        const same = new Float32Array(n * width);
        readTensorRowsInto(ckpt, 'w.f32', 'f32', r, same);
        expect(Buffer.from(same.buffer).equals(Buffer.from(values.buffer, r * width * 4, n * width * 4))).toBe(true);
      }
  });

  it('rejects rows past the end, part of a row or an unsupported conversion, the tensor named', () => {
    expect(() => readTensorRowsInto(ckpt, 'w.f32', 'f32', 299, new Float32Array(2 * width))).toThrow(
      /w\.f32.*rows \[299, 299 \+ 8198 \/ 4099\) are not whole rows of its 300/,
    );
    expect(() => readTensorRowsInto(ckpt, 'w.f32', 'f32', 0, new Float32Array(width + 1))).toThrow(/not whole rows/);
    expect(() => readTensorRowsInto(ckpt, 'w.f32', 'f32', -1, new Float32Array(width))).toThrow(/not whole rows/);
    expect(() => readTensorRowsInto(ckpt, 'w.f32', 'u8', 0, new Uint8Array(width))).toThrow(
      /cannot stream f32 into u8/,
    );
  });
});
