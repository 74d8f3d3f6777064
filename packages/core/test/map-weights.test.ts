// Resident weights mapped from their checkpoint file (readResidentTensor with `map` → native/map-file.cc
// through native-kernels.ts's mapFileInto; Arena.alloc's pageOffset places them where the file puts them
// within a page). Linux with the addon built; the mapping cases skip elsewhere, unless
// DSV3_REQUIRE_NATIVE_KERNELS=1 (CI) makes a missing addon a failure. Mapped or read, the bytes must equal
// the file's.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HUGE_PAGE, OS_PAGE } from '../src/cpu/gemm/arena.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { allocResident, freeResident, isResident } from '../src/cpu/gemm/index.js';
import {
  cpu,
  encodeBf16,
  mapResidentTensors,
  readResidentTensor,
  readShardedCheckpoint,
  readTensorInto,
  writeSafetensors,
  type CpuStorage,
} from '../src/index.js';
import { randomUniform } from '../src/testing.js';

const dir = mkdtempSync(join(tmpdir(), 'dsv3-map-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = join(dir, 'model.safetensors');

// Same-dtype tensors in name order, so each starts where the ones before it end: ragged sizes put them
// at different places within a page (and some span no whole page).
const bf16 = (n: number, seed: number) => encodeBf16(Float32Array.from(randomUniform(n, seed)));
const tensors = {
  'a.f32': { dtype: 'f32' as const, shape: [3, 1111], data: Float32Array.from(randomUniform(3333, 1)) },
  'b.f32': { dtype: 'f32' as const, shape: [5000], data: Float32Array.from(randomUniform(5000, 2)) },
  'c.bf16': { dtype: 'bf16' as const, shape: [7], data: bf16(7, 3) },
  'd.bf16': { dtype: 'bf16' as const, shape: [129, 257], data: bf16(129 * 257, 4) },
  'e.bf16': { dtype: 'bf16' as const, shape: [2048], data: bf16(2048, 5) }, // one page of bytes
  'f.bf16': { dtype: 'bf16' as const, shape: [3, 4099], data: bf16(3 * 4099, 6) },
  'g.fp8': {
    dtype: 'fp8-e4m3' as const,
    shape: [100, 333],
    data: Uint8Array.from({ length: 33300 }, (_, i) => (i * 37) % 126),
  },
};
writeSafetensors(file, tensors);
const ckpt = readShardedCheckpoint(dir);
const fileBytes = readFileSync(file);

/** The stored bytes of tensor `name`. */
const stored = (name: string): Buffer => {
  const info = ckpt.info(name);
  const n = info.shape.reduce((a, b) => a * b, 1) * (info.dtype === 'f32' ? 4 : info.dtype === 'bf16' ? 2 : 1);
  return fileBytes.subarray(info.fileOffset, info.fileOffset + n);
};
const bytesOf = (s: CpuStorage): Buffer => Buffer.from(s.data.buffer, s.data.byteOffset, s.data.byteLength);
/** This process's mappings of `path`. */
const mappingsOf = (path: string): number =>
  readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.endsWith(path)).length;
/** The bytes of `path` this process's mappings hold in memory (smaps' Rss, summed). */
const residentBytesOf = (path: string): number => {
  let total = 0;
  let inPath = false;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inPath = line.endsWith(path);
    else if (inPath && line.startsWith('Rss:')) total += Number(line.split(/\s+/)[1]) * 1024;
  }
  return total;
};
/** Whether this process maps the checkpoint file. */
const mapsFile = (): boolean => mappingsOf(file) > 0;

const available = (() => {
  if (process.platform !== 'linux') return false;
  const s = readResidentTensor(ckpt, 'd.bf16', 'bf16', { map: true });
  const mapped = isResident(s.data) && mapsFile();
  cpu.free(s);
  return mapped;
})();
const required = process.env.DSV3_REQUIRE_NATIVE_KERNELS === '1' && process.platform === 'linux';

describe('resident weights mapped from the checkpoint file', () => {
  it.runIf(required)('map here (Linux, DSV3_REQUIRE_NATIVE_KERNELS=1)', () => {
    expect(available, 'build the addon with `node packages/core/scripts/build-native.mjs`').toBe(true);
  });

  it('the tensors sit at different places within a page, some spanning no whole page', () => {
    const phases = new Set(Object.keys(tensors).map((n) => ckpt.info(n).fileOffset % OS_PAGE));
    expect(phases.size).toBeGreaterThanOrEqual(5);
  });

  it('every tensor reads byte for byte, mapped or not; mapped ones land where the file puts them within a page', () => {
    for (const map of [true, false])
      for (const name of Object.keys(tensors)) {
        const info = ckpt.info(name);
        const s = readResidentTensor(ckpt, name, info.dtype as 'f32', { map });
        expect(isResident(s.data)).toBe(true);
        if (map) expect(s.data.byteOffset % OS_PAGE, name).toBe(info.fileOffset % OS_PAGE);
        expect(bytesOf(s).equals(stored(name)), `${name}, map ${map}`).toBe(true);
        cpu.free(s);
      }
  });

  it.runIf(available)(
    'a write stays in memory (copy on write), never reaching the file; freed memory is reused zeroed',
    () => {
      const before = Buffer.from(fileBytes);
      const s = readResidentTensor(ckpt, 'f.bf16', 'bf16', { map: true });
      expect(mapsFile()).toBe(true);
      s.data.fill(0x7f80);
      expect((s.data as Uint16Array).every((v) => v === 0x7f80)).toBe(true);
      expect(readFileSync(file).equals(before)).toBe(true);
      // the file's pages hold its bytes for a new reader as well
      const again = readResidentTensor(ckpt, 'f.bf16', 'bf16', { map: true });
      expect(bytesOf(again).equals(stored('f.bf16'))).toBe(true);
      const bytes = s.data.byteLength;
      cpu.free(s);
      cpu.free(again);
      const fresh = allocResident('u8', bytes)!;
      try {
        expect(fresh.every((v) => v === 0)).toBe(true);
      } finally {
        freeResident(fresh);
      }
    },
  );

  it('nothing maps unless asked, nor for a converted dtype', () => {
    const other = mkdtempSync(join(dir, 'read-'));
    writeSafetensors(join(other, 'model.safetensors'), { w: tensors['d.bf16'] });
    const c = readShardedCheckpoint(other);
    try {
      const s = readResidentTensor(c, 'w', 'bf16');
      expect(readFileSync('/proc/self/maps', 'utf8').includes(other)).toBe(false);
      expect(bytesOf(s).equals(stored('d.bf16'))).toBe(true);
      cpu.free(s);
    } finally {
      c.close();
    }
    // bf16 → f32 converts through a chunk: the values, never the file's pages
    const f = readResidentTensor(ckpt, 'd.bf16', 'f32', { map: true });
    const want = new Float32Array(129 * 257);
    readTensorInto(ckpt, 'd.bf16', 'f32', want);
    expect(Buffer.from(f.data.buffer, f.data.byteOffset, f.data.byteLength).equals(Buffer.from(want.buffer))).toBe(
      true,
    );
    cpu.free(f);
  });

  it('mapResidentTensors: every tensor as the file lays them out, byte for byte, in one mapping; each freed on its own', () => {
    const names = Object.keys(tensors);
    // a copy of the file no earlier test mapped (freed mapped blocks keep their mappings until overwritten)
    const copy = join(mkdtempSync(join(dir, 'runs-')), 'model.safetensors');
    writeSafetensors(copy, tensors);
    const ckpt = readShardedCheckpoint(dirname(copy));
    const got = mapResidentTensors(ckpt, [...names, 'b.f32']); // a name twice: placed once
    expect([...got.keys()].sort()).toEqual(names);
    const first = got.get('a.f32')!.data.byteOffset - ckpt.info('a.f32').fileOffset;
    // where the file puts them within a 2 MiB page, in the address space (huge folios map whole)
    const engine = getEngine()!;
    expect((engine.hugePhase + got.get('a.f32')!.data.byteOffset) % HUGE_PAGE).toBe(
      ckpt.info('a.f32').fileOffset % HUGE_PAGE,
    );
    for (const name of names) {
      const s = got.get(name)!;
      expect(isResident(s.data)).toBe(true);
      expect(s.data.byteOffset - ckpt.info(name).fileOffset, name).toBe(first);
      expect(bytesOf(s).equals(stored(name)), name).toBe(true);
    }
    if (available) expect(mappingsOf(copy)).toBe(1);
    for (const name of ['d.bf16', 'a.f32', 'g.fp8', 'c.bf16', 'b.f32', 'f.bf16', 'e.bf16']) cpu.free(got.get(name)!);
    ckpt.close();
  });

  it.runIf(available)('mapped weights are in at load: a run of them, and a tensor mapped on its own', () => {
    const weights = {
      'a.w': { dtype: 'bf16' as const, shape: [64, 2048], data: bf16(64 * 2048, 11) },
      'b.w': { dtype: 'bf16' as const, shape: [4096, 1024], data: bf16(4096 * 1024, 12) },
      'c.w': { dtype: 'bf16' as const, shape: [64, 2048], data: bf16(64 * 2048, 13) },
    };
    const bytes = (2 * 64 * 2048 + 4096 * 1024) * 2;
    const copy = join(mkdtempSync(join(dir, 'prefault-')), 'model.safetensors');
    writeSafetensors(copy, weights);
    const c = readShardedCheckpoint(dirname(copy));
    try {
      const got = mapResidentTensors(c, Object.keys(weights));
      expect(mappingsOf(copy)).toBe(1);
      // every page in before anything reads it (partial pages at the ends may be read ones, not mapped)
      expect(residentBytesOf(copy)).toBeGreaterThanOrEqual(bytes - 2 * OS_PAGE);
      for (const name of Object.keys(weights))
        expect(
          bytesOf(got.get(name)!).equals(Buffer.from(weights[name as keyof typeof weights].data.buffer)),
          name,
        ).toBe(true);
      for (const s of got.values()) cpu.free(s);
      const again = join(mkdtempSync(join(dir, 'prefault-')), 'model.safetensors');
      writeSafetensors(again, weights);
      const c2 = readShardedCheckpoint(dirname(again));
      const single = readResidentTensor(c2, 'b.w', 'bf16', { map: true });
      expect(residentBytesOf(again)).toBeGreaterThanOrEqual(4096 * 1024 * 2 - 2 * OS_PAGE);
      cpu.free(single);
      c2.close();
    } finally {
      c.close();
    }
  });

  it('mapResidentTensors leaves to the caller what no memory holds (here: no engine), run halves down to single tensors', () => {
    gemmConfig.forceJs = true;
    try {
      expect(mapResidentTensors(ckpt, Object.keys(tensors)).size).toBe(0);
    } finally {
      gemmConfig.forceJs = false;
    }
  });

  it('mapResidentTensors leaves out what it cannot place as stored (an f32 not on a 4-byte offset): read those', () => {
    const other = mkdtempSync(join(dir, 'odd-'));
    // by hand: writers put f32 tensors first; here a 6-byte bf16 one puts b 2 bytes off a 4-byte boundary
    const a = bf16(3, 7);
    const b = Float32Array.from(randomUniform(10, 8));
    const json = JSON.stringify({
      a: { dtype: 'BF16', shape: [3], data_offsets: [0, 6] },
      b: { dtype: 'F32', shape: [10], data_offsets: [6, 46] },
    }).padEnd(128, ' ');
    const head = Buffer.alloc(8);
    head.writeBigUInt64LE(BigInt(json.length));
    writeFileSync(
      join(other, 'model.safetensors'),
      Buffer.concat([head, Buffer.from(json), Buffer.from(a.buffer), Buffer.from(b.buffer)]),
    );
    const c = readShardedCheckpoint(other);
    expect(c.info('b').fileOffset % 4).toBe(2);
    try {
      const got = mapResidentTensors(c, ['a', 'b']);
      expect([...got.keys()]).toEqual(['a']);
      cpu.free(got.get('a')!);
      const read = readResidentTensor(c, 'b', 'f32', { map: true });
      expect(Array.from(read.data as Float32Array)).toEqual(Array.from(b));
      cpu.free(read);
    } finally {
      c.close();
    }
  });

  it("the arena's pageOffset: blocks that far into a page, released and reused; a bad offset is refused", () => {
    const blocks = [0, 32, 2048, 4064, 4095].map((off) => {
      const b = allocResident('u8', 10_000, true, off)!;
      expect(b.byteOffset % OS_PAGE).toBe(off);
      expect(b.every((v) => v === 0)).toBe(true);
      b.fill(1);
      return b;
    });
    for (const b of blocks) freeResident(b);
    const again = allocResident('u8', 10_000, true, 100)!;
    expect(again.byteOffset % OS_PAGE).toBe(100);
    expect(again.every((v) => v === 0)).toBe(true);
    freeResident(again);
    expect(() => allocResident('u8', 16, true, OS_PAGE)).toThrow(
      /pageOffset must be an integer in \[0, 4096\), got 4096/,
    );
    expect(() => allocResident('u8', 16, true, 1.5)).toThrow(/pageOffset/);
  });
});
