// Resident weights and the GEMV path: f32 and bf16 weights (resident in the engine's memory or not),
// single- and multi-threaded, ragged shapes, against a float64 reference; the arena allocator; weight-only
// bf16 through matmul/linear; resident storage given back on dispose.
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { cpu, decodeBf16, encodeBf16, fp8NaNIndex, linear, readSafetensors, Tensor } from '../src/index.js';
import { randomUniform, relativeError } from '../src/testing.js';
import { linearReference64 as reference } from './helpers.js';
import { Arena } from '../src/cpu/gemm/arena.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import {
  allocResident,
  freeResident,
  gemmInfo,
  isResident,
  setGemmThreads,
  weightProduct,
} from '../src/cpu/gemm/index.js';
import { relaxedSimdWorks } from '../src/cpu/gemm/sgemm-kernel.js';

const saved = { ...gemmConfig };
afterEach(() => Object.assign(gemmConfig, saved));
afterAll(() => Object.assign(gemmConfig, saved));

const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [1, 3, 7],
  [1, 4, 8],
  [1, 5, 9],
  [2, 17, 64],
  [3, 130, 130],
  [4, 33, 1000],
  [1, 257, 17],
  [4, 6, 3],
  [1, 19, 1059],
];

describe.each([
  ['1 thread', 1],
  ['2 threads', 2],
])('GEMV (%s)', (_, threads) => {
  it.each(['f32', 'bf16'] as const)('%s weights, resident and host, ragged shapes, match float64', (kind) => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
    let seed = 1;
    for (const [m, n, k] of SHAPES) {
      const x = Float32Array.from(randomUniform(m * k, seed++));
      const wf = Float32Array.from(randomUniform(n * k, seed++));
      const host = kind === 'f32' ? wf : encodeBf16(wf);
      const exact = kind === 'f32' ? wf : decodeBf16(host as Uint16Array);
      const want = reference(m, n, k, x, exact);
      const res = allocResident(kind, n * k)!;
      expect(isResident(res)).toBe(true);
      res.set(host);
      for (const w of [host, res]) {
        const y = new Float32Array(m * n).fill(NaN);
        weightProduct({ m, n, k, x, w: w as Float32Array | Uint16Array, y });
        expect(relativeError(y, want), `${kind} ${m}x${n}x${k}`).toBeLessThan(1e-6);
      }
      freeResident(res);
    }
  });
});

describe('GEMV edges', () => {
  it('k = 0 gives zeros; short arrays are rejected with the sizes', () => {
    const y = new Float32Array(6).fill(5);
    weightProduct({ m: 2, n: 3, k: 0, x: new Float32Array(0), w: new Float32Array(0), y });
    expect([...y]).toEqual([0, 0, 0, 0, 0, 0]);
    expect(() => weightProduct({ m: 2, n: 3, k: 4, x: new Float32Array(7), w: new Float32Array(12), y })).toThrow(
      /too short/,
    );
  });

  it.each([1, 2])(
    'above gemvMaxM rows the GEMM runs on the bf16 weight widened in the engine (%i threads), host and resident',
    (threads) => {
      setGemmThreads(threads);
      gemmConfig.threadMinWork = 0;
      gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
      for (const [m, n, k] of [
        [9, 40, 70],
        [5, 3, 7],
        [33, 130, 259],
      ] as const) {
        const x = Float32Array.from(randomUniform(m * k, 7));
        const w = encodeBf16(Float32Array.from(randomUniform(n * k, 8)));
        const res = allocResident('bf16', n * k)!;
        res.set(w);
        const want = reference(m, n, k, x, decodeBf16(w));
        for (const wt of [w, res as Uint16Array]) {
          const y = new Float32Array(m * n).fill(NaN);
          weightProduct({ m, n, k, x, w: wt, y });
          expect(relativeError(y, want), `${m}x${n}x${k}`).toBeLessThan(1e-6);
        }
        freeResident(res);
      }
    },
  );

  it('relaxed SIMD: the probe agrees with validation (the plain kernel is the fallback)', () => {
    const works = relaxedSimdWorks();
    expect(typeof works).toBe('boolean');
    expect(gemmInfo().relaxedSimd).toBe(works);
  });
});

describe('arena', () => {
  it('allocates aligned zeroed blocks, reuses and coalesces freed ones, refuses past the maximum', () => {
    const mem = new WebAssembly.Memory({ initial: 1, maximum: 4 });
    const arena = new Arena(mem, 1000, 4 * 65536);
    const a = arena.alloc(100)!,
      b = arena.alloc(1000)!,
      c = arena.alloc(10)!;
    for (const p of [a, b, c]) expect(p % 64).toBe(0);
    expect(b).toBeGreaterThanOrEqual(a + 100);
    new Uint8Array(mem.buffer, b, 1000).fill(7);
    arena.release(a);
    arena.release(b);
    const d = arena.alloc(1100)!; // fits the merged a+b hole
    expect(d).toBe(a);
    expect(new Uint8Array(mem.buffer, d, 1100).every((v) => v === 0)).toBe(true);
    expect(arena.alloc(4 * 65536)).toBeNull();
    expect(() => arena.release(d + 64)).toThrow(/unknown block/);
    arena.release(c);
    arena.release(d);
    expect(arena.usedBytes).toBe(0);
    expect(arena.alloc(3 * 65536)).not.toBeNull(); // everything went back to the bump region
  });
});

describe('weight-only bf16 through linear()', () => {
  it('f32 activations against a resident bf16 weight: batched rows, matches float64; dispose frees', () => {
    const [B, S, k, n] = [3, 2, 50, 37];
    const xv = Float32Array.from(randomUniform(B * S * k, 11));
    const wbits = encodeBf16(Float32Array.from(randomUniform(n * k, 12)));
    const storage = cpu.allocResident('bf16', n * k);
    (storage.data as Uint16Array).set(wbits);
    const w = new Tensor(cpu, storage, [n, k], 'bf16');
    const x = new Tensor(cpu, cpu.upload('f32', xv), [B, S, k], 'f32');
    const y = linear(x, w);
    expect(y.dtype).toBe('f32');
    expect(y.shape).toEqual([B, S, n]);
    expect(relativeError(y.dataSync(), reference(B * S, n, k, xv, decodeBf16(wbits)))).toBeLessThan(1e-6);
    const before = gemmInfo().residentBytes;
    w.dispose();
    expect(gemmInfo().residentBytes).toBeLessThan(before);
  });

  it('mixed dtypes other than f32 x bf16 are still rejected', () => {
    const x = new Tensor(cpu, cpu.upload('bf16', new Uint16Array(4)), [2, 2], 'bf16');
    const w = new Tensor(cpu, cpu.upload('f32', new Float32Array(4)), [2, 2], 'f32');
    expect(() => linear(x, w)).toThrow(/dtypes differ/);
  });
});

describe('plain and relaxed-SIMD GEMV kernels', () => {
  it('relaxed SIMD is switched on where Node only has it behind a flag (Node 20)', () => {
    expect(gemmInfo().relaxedSimd).toBe(true);
  });

  it.each([['plain'], ['relaxed']])(
    'the %s kernel runs in a fresh process and matches float64',
    async (mode) => {
      const { execFileSync } = await import('node:child_process');
      const { join } = await import('node:path');
      const child = join(import.meta.dirname, 'child/relaxed-gemv.ts');
      const out = execFileSync(process.execPath, ['--conditions=@dsv3/source', '--import', 'tsx', child, mode], {
        encoding: 'utf8',
        timeout: 120_000,
      });
      const r = JSON.parse(out.trim().split('\n').at(-1)!) as { relaxed: boolean; worst: number };
      expect(r.relaxed).toBe(mode === 'relaxed');
      expect(r.worst).toBeLessThan(1e-6);
    },
    150_000,
  );
});

describe('FP8 E4M3 weights with 128x128 block scales', () => {
  // The decode oracle is torch's, from the reference fixtures (every byte's value).
  const decode = readSafetensors(join(import.meta.dirname, 'fixtures/fp8-goldens.safetensors')).get('fp8.e4m3.decode')
    .data as Float32Array;

  it.each([1, 2])(
    'GEMV (%i threads), resident and host, ragged shapes across scale blocks, match float64',
    (threads) => {
      setGemmThreads(threads);
      gemmConfig.threadMinWork = 0;
      gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
      let seed = 50;
      for (const [m, n, k] of [
        [1, 1, 1],
        [1, 5, 9],
        [2, 131, 300],
        [4, 260, 129],
        [3, 7, 256],
        [1, 129, 1000],
      ] as const) {
        const x = Float32Array.from(randomUniform(m * k, seed++));
        const w = Uint8Array.from(randomUniform(n * k, seed++, 0, 254), (v) => {
          const b = Math.floor(v);
          return (b & 0x7f) === 0x7f ? b - 1 : b;
        });
        const sc = Float32Array.from(randomUniform(Math.ceil(n / 128) * Math.ceil(k / 128), seed++, 0.01, 0.1));
        const exact = Float64Array.from(
          w,
          (b, i) => decode[b]! * sc[Math.floor(i / k / 128) * Math.ceil(k / 128) + Math.floor((i % k) / 128)]!,
        );
        const want = reference(m, n, k, x, exact);
        const res = allocResident('fp8-e4m3', n * k)!;
        res.set(w);
        for (const wt of [w, res as Uint8Array]) {
          const y = new Float32Array(m * n).fill(NaN);
          weightProduct({ m, n, k, x, w: wt, scales: sc, y });
          expect(relativeError(y, want), `${m}x${n}x${k}`).toBeLessThan(1e-6);
        }
        // Above gemvMaxM rows: the GEMM on the weight widened inside the engine (host and resident).
        const m2 = 7,
          x2 = Float32Array.from(randomUniform(m2 * k, seed++)),
          want2 = reference(m2, n, k, x2, exact);
        for (const wt of [w, res as Uint8Array]) {
          const y2 = new Float32Array(m2 * n).fill(NaN);
          weightProduct({ m: m2, n, k, x: x2, w: wt, scales: sc, y: y2 });
          expect(relativeError(y2, want2), `${m2}x${n}x${k}`).toBeLessThan(1e-6);
        }
        freeResident(res);
      }
    },
  );

  it('activations of any magnitude (GEMV: x staged times 2^(120 - e); m > 4: the weight widened), no overflow', () => {
    const [n, k] = [9, 300];
    const w = Uint8Array.from(randomUniform(n * k, 90, 0, 126), Math.floor); // positive, subnormals included
    const sc = Float32Array.from([0.5, 2, 300]);
    const exact = Float64Array.from(w, (b, i) => decode[b]! * sc[Math.floor((i % k) / 128)]!);
    for (const [mag, threads] of [
      [1e30, 1],
      [3e4, 2],
      [1e-25, 1],
    ] as const) {
      setGemmThreads(threads);
      gemmConfig.threadMinWork = 0;
      gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
      for (const m of [1, 3, 6]) {
        const x = Float32Array.from(randomUniform(m * k, 91), (v) => v * mag);
        const y = new Float32Array(m * n);
        weightProduct({ m, n, k, x, w, scales: sc, y });
        expect(relativeError(y, reference(m, n, k, x, exact)), `|x| ~ ${mag}, m ${m}`).toBeLessThan(1e-6);
      }
    }
    const x = new Float32Array(k).fill(1);
    x[5] = Number.POSITIVE_INFINITY;
    const y = new Float32Array(n);
    weightProduct({ m: 1, n, k, x, w, scales: sc, y });
    expect(y.some((v) => !Number.isFinite(v))).toBe(true);
  });

  it.each([1, 2])(
    'every one of the 256 codes at every lane position (vector, 8-byte block, scalar tail), %i threads: exact (NaN codes: ±480, refused at load)',
    (threads) => {
      setGemmThreads(threads);
      gemmConfig.threadMinWork = 0;
      gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
      const [n, k] = [256, 41]; // k = 41: two 16-byte vectors, one 8-byte block, one scalar
      const w = Uint8Array.from({ length: n * k }, (_, i) => Math.floor(i / k)); // row c is all code c
      const sc = Float32Array.from([0.75, 1.5]);
      for (const res of [false, true]) {
        const wt = res ? (allocResident('fp8-e4m3', n * k) as Uint8Array) : w;
        if (res) wt.set(w);
        // 4 rows at a time: the GEMV; 8: the weight widened for the GEMM
        for (const m of [4, 8])
          for (let p0 = 0; p0 < k; p0 += m) {
            const rows = Math.min(m, k - p0);
            const x = new Float32Array(rows * k);
            for (let i = 0; i < rows; i++) x[i * k + p0 + i] = 1; // row i picks position p0 + i
            const y = new Float32Array(rows * n);
            weightProduct({ m: rows, n, k, x, w: wt, scales: sc, y });
            for (let i = 0; i < rows; i++)
              for (let c = 0; c < n; c++) {
                // 0x7f / 0xff are NaN in E4M3; the kernels read them as ±480 (fp8NaNIndex guards loads)
                const value = (c & 0x7f) === 0x7f ? (c & 0x80 ? -480 : 480) : decode[c]!;
                const want = Math.fround(value * sc[c >> 7]!) + 0; // sums start at +0, so -0 reads +0
                expect(y[i * n + c], `code ${c} at position ${p0 + i}`).toBe(want);
              }
          }
        if (res) freeResident(wt);
      }
    },
  );

  it('fp8NaNIndex finds the E4M3 NaN codes (0x7f, 0xff) at any position and nothing else', () => {
    const w = Uint8Array.from({ length: 1001 }, (_, i) => [0x7e, 0xfe, 0x00, 0x80, 0x3f, 0x6f][i % 6]!);
    expect(fp8NaNIndex(w)).toBe(-1);
    for (const code of [0x7f, 0xff])
      for (const at of [0, 1, 2, 3, 4, 500, 998, 999, 1000]) {
        const v = w.slice();
        v[at] = code;
        if (at < 1000) v[1000] = code; // a later one does not mask the first
        expect(fp8NaNIndex(v)).toBe(at);
        expect(fp8NaNIndex(v.subarray(1))).toBe(at === 0 ? 999 : at - 1); // unaligned view
      }
  });

  it('block scales far apart in one row block (large ones lower x by 2^-t first): no overflow, no lost blocks', () => {
    const [n, k] = [130, 384];
    const w = Uint8Array.from(randomUniform(n * k, 95, 0, 126), Math.floor);
    const sc = Float32Array.from([1e12, 1e-9, 3, 0.01, 2e5, 7]); // [2, 3] blocks
    const exact = Float64Array.from(
      w,
      (b, i) => decode[b]! * sc[Math.floor(i / k / 128) * 3 + Math.floor((i % k) / 128)]!,
    );
    for (const [mag, threads] of [
      [1e20, 2],
      [1, 1],
      [1e-20, 2],
    ] as const) {
      setGemmThreads(threads);
      gemmConfig.threadMinWork = 0;
      gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
      for (const m of [1, 4]) {
        const x = Float32Array.from(randomUniform(m * k, 96), (v) => v * mag);
        const y = new Float32Array(m * n);
        weightProduct({ m, n, k, x, w, scales: sc, y });
        expect(relativeError(y, reference(m, n, k, x, exact)), `|x| ~ ${mag}, m ${m}`).toBeLessThan(1e-6);
        // The tiny-scale block on its own (the rows' other blocks zeroed in x) is not lost either.
        const x1 = x.map((v, i) => (Math.floor((i % k) / 128) === 1 ? v : 0));
        weightProduct({ m, n, k, x: x1, w, scales: sc, y });
        expect(relativeError(y.subarray(0, m * 128), reference(m, n, k, x1, exact).subarray(0, m * 128))).toBeLessThan(
          1e-6,
        );
      }
    }
  });

  it('rejects missing or wrongly sized scales', () => {
    const y = new Float32Array(2);
    expect(() => weightProduct({ m: 1, n: 2, k: 3, x: new Float32Array(3), w: new Uint8Array(6), y })).toThrow(
      /need 1 f32 block scales/,
    );
    expect(() =>
      weightProduct({ m: 1, n: 2, k: 3, x: new Float32Array(3), w: new Uint8Array(6), scales: new Float32Array(2), y }),
    ).toThrow(/block scales/);
  });
});

describe('resident storage limits', () => {
  it('refuses weights that would eat the scratch headroom (the backend then falls back to host storage)', () => {
    gemmConfig.residentHeadroom = 4 * 1024 * 1024 * 1024; // nothing may be resident
    expect(allocResident('f32', 16)).toBeNull();
    const st = cpu.allocResident('f32', 16);
    expect(isResident(st.data)).toBe(false);
    // Products against the host weight still run (copied in per call).
    const y = new Float32Array(2);
    (st.data as Float32Array).fill(1);
    weightProduct({ m: 1, n: 2, k: 8, x: new Float32Array(8).fill(0.5), w: st.data as Float32Array, y });
    expect(Array.from(y)).toEqual([4, 4]);
  });
});
