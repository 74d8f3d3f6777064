// What keeps an inference process's peak memory near its weights: a prefill's large work arrays and
// staging scratch go back to the engine's memory when their call ends (the next op's blocks reuse the
// pages instead of the memory holding every path's largest at once), and the C heap's free pages
// trimmed. V8's young generation held: young-generation.test.ts.
import { afterEach, describe, expect, it } from 'vitest';
import { F32WorkArrays, KEEP_WORK_BYTES } from '../src/cpu/work-arrays.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { KEEP_SCRATCH_BYTES } from '../src/cpu/gemm/wasm-engine.js';
import { gemmInfo, isResident, trimNativeHeap, weightProducts } from '../src/cpu/gemm/index.js';
import { decodeBf16, encodeBf16 } from '../src/index.js';
import { randomUniform, relativeError } from '../src/testing.js';
import { linearReference64 as reference } from './helpers.js';

const saved = { ...gemmConfig };
afterEach(() => Object.assign(gemmConfig, saved));

const used = (): number => gemmInfo().residentBytes;

describe('F32WorkArrays.release', () => {
  it('gives back the resident arrays over KEEP_WORK_BYTES and keeps the small ones where they are', () => {
    const work = new F32WorkArrays(true);
    const bigN = (2 * KEEP_WORK_BYTES) / 4,
      smallN = 1000;
    const before = used();
    const big = work.take(0, bigN),
      small = work.take(1, smallN);
    expect(isResident(big) && isResident(small)).toBe(true);
    big.fill(1);
    expect(used() - before).toBeGreaterThanOrEqual(bigN * 4);
    work.release();
    expect(used() - before).toBeLessThan(bigN * 4); // the big array's block is free again
    expect(work.take(1, smallN).byteOffset).toBe(small.byteOffset); // the small one stayed
    const again = work.take(0, bigN); // a new block, from the free list
    expect(again.length).toBe(bigN);
    work.release();
    work.release(); // nothing left to give back: a no-op
  });

  it('leaves host arrays (the engine full or absent) alone', () => {
    const work = new F32WorkArrays(false);
    const a = work.take(0, (2 * KEEP_WORK_BYTES) / 4);
    expect(isResident(a)).toBe(false);
    work.release();
    expect(work.take(0, a.length).buffer).toBe(a.buffer);
  });
});

describe('staging scratch', () => {
  // f32 weights: a prefill's product is an sgemm (run); bf16: the weight-product job (weightGemmMany)
  it.each(['f32', 'bf16'] as const)(
    'a %s weight-product job staging more than KEEP_SCRATCH_BYTES gives it back at its end; the products are right',
    (kind) => {
      gemmConfig.threads = 2;
      // x in host memory, so the job stages it: 600 x 1024 f32 = 2.3 MiB, over the kept size
      const [m, n, k] = [600, 96, 1024];
      expect(m * k * 4).toBeGreaterThan(KEEP_SCRATCH_BYTES);
      const x = Float32Array.from(randomUniform(m * k, 1));
      const wf = Float32Array.from(randomUniform(n * k, 2));
      const w = kind === 'bf16' ? encodeBf16(wf) : wf;
      const exact = kind === 'bf16' ? decodeBf16(w as Uint16Array) : wf;
      const y = new Float32Array(m * n);
      // a first small threaded job: the worker threads' workspaces are allocated (kept for good)
      const xs = Float32Array.from(randomUniform(4 * k, 3));
      weightProducts([{ m: 4, n, k, x: xs, w, y: new Float32Array(4 * n) }]);
      const before = used();
      weightProducts([{ m, n, k, x, w, y }]);
      // the job's scratch went back (any smaller one kept before it too)
      expect(used()).toBeLessThanOrEqual(before);
      // a small job's scratch is kept, up to KEEP_SCRATCH_BYTES
      weightProducts([{ m: 4, n, k, x: xs, w, y: new Float32Array(4 * n) }]);
      expect(used() - before).toBeLessThanOrEqual(KEEP_SCRATCH_BYTES);
      expect(relativeError(y, reference(m, n, k, x, exact))).toBeLessThan(1e-5);
    },
  );
});

describe('trimNativeHeap', () => {
  const glibc = Boolean(
    (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header
      ?.glibcVersionRuntime,
  );
  // the addon is optional, except in CI (DSV3_REQUIRE_NATIVE_KERNELS=1)
  const required = process.env.DSV3_REQUIRE_NATIVE_KERNELS === '1' && glibc;
  it('runs malloc_trim through the addon on glibc (false without either)', () => {
    const trimmed = trimNativeHeap();
    if (required) expect(trimmed).toBe(true);
    else expect(typeof trimmed).toBe('boolean');
    if (!glibc) expect(trimmed).toBe(false);
  });
});
