// Resident weights past one wasm memory: with an artificially small memory limit, weights spread over
// several arenas (each a memory with its own kernels and workers); products against each read it in
// place and match float64; freeing returns the room. Its own file: the limit must be set before the
// first engine exists (each test file runs in a fresh process).
import { afterAll, describe, expect, it } from 'vitest';
import { decodeBf16, encodeBf16 } from '../src/index.js';
import { randomUniform, relativeError } from '../src/testing.js';
import { linearReference64 as reference } from './helpers.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import {
  allocResident,
  freeResident,
  gemmInfo,
  isResident,
  setGemmThreads,
  sgemm,
  weightProduct,
} from '../src/cpu/gemm/index.js';

const saved = { ...gemmConfig };
// 24 MiB memories, 13 MiB of each left for workspaces and scratch (two threads, the widened copy of a
// bf16 weight, a packed B): ~11 MiB of weights per arena.
gemmConfig.maxPages = 384;
gemmConfig.residentHeadroom = 13 << 20;
gemmConfig.maxArenas = 6;
afterAll(() => Object.assign(gemmConfig, saved));

describe('several arenas', () => {
  it('weights past one memory go to further arenas; products on each match float64 (1 and 2 threads)', () => {
    const [n, k] = [1000, 1030]; // ~4 MiB f32, ~2 MiB bf16 each
    const weights = Array.from({ length: 8 }, (_, i) => {
      const wf = Float32Array.from(randomUniform(n * k, 10 + i));
      const kind = i % 2 ? ('bf16' as const) : ('f32' as const);
      const res = allocResident(kind, n * k);
      expect(res, `weight ${i}`).not.toBeNull();
      const host = kind === 'f32' ? wf : encodeBf16(wf);
      res!.set(host);
      return { res: res!, exact: kind === 'f32' ? wf : decodeBf16(host as Uint16Array) };
    });
    expect(gemmInfo().arenas).toBeGreaterThanOrEqual(3);
    for (const threads of [1, 2]) {
      setGemmThreads(threads);
      gemmConfig.threadMinWork = 0;
      gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
      let seed = 100;
      for (const { res, exact } of weights) {
        expect(isResident(res)).toBe(true);
        for (const m of [1, 3, 9]) {
          const x = Float32Array.from(randomUniform(m * k, seed++));
          const y = new Float32Array(m * n).fill(Number.NaN);
          weightProduct({ m, n, k, x, w: res as Float32Array | Uint16Array, y });
          expect(relativeError(y, reference(m, n, k, x, exact)), `m ${m}`).toBeLessThan(1e-6);
        }
        if (res instanceof Float32Array) {
          // sgemm with the resident operand as B (a Linear weight, transposed) runs on its engine.
          const m = 7,
            x = Float32Array.from(randomUniform(m * k, seed++)),
            y = new Float32Array(m * n);
          sgemm({ m, n, k, a: x, b: res, transB: true, c: y });
          expect(relativeError(y, reference(m, n, k, x, exact))).toBeLessThan(1e-6);
        }
      }
    }
    const before = gemmInfo().residentBytes;
    for (const { res } of weights) freeResident(res);
    expect(gemmInfo().residentBytes).toBeLessThan(before - 8 * n * k * 2);
    // Freed room is reused (no arena is added for a weight that fits a freed one).
    const arenas = gemmInfo().arenas;
    const again = allocResident('bf16', n * k)!;
    expect(again).not.toBeNull();
    expect(gemmInfo().arenas).toBe(arenas);
    freeResident(again);
  });

  it('gives up (null, so the caller keeps host storage) past maxArenas or for a weight no arena holds', () => {
    expect(allocResident('f32', 64 << 20)).toBeNull();
    const held = [];
    for (let i = 0; i < 20; i++) {
      const a = allocResident('f32', 1 << 20);
      if (!a) break;
      held.push(a);
    }
    expect(gemmInfo().arenas).toBe(gemmConfig.maxArenas);
    expect(allocResident('f32', 1 << 20)).toBeNull();
    for (const a of held) freeResident(a);
  });
});
