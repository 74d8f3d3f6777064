// The native kernels (native/kernels.cc) against the wasm kernels they replace: every product route
// that ends in the macro-kernel (the f32 GEMM with B packed by the job or by each task, batched and
// pitched; the weight GEMM widening f32 / bf16 / FP8 weights as it packs) gives the same bits on an
// engine built with them as on one without, on ragged shapes, on one thread and on the workers. Bad
// addresses throw instead of touching memory outside the wasm heap. Where the addon is not built or the
// CPU lacks AVX-512 the suite skips, unless DSV3_REQUIRE_NATIVE_KERNELS=1 (CI) makes that a failure.
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { normalizeGemm } from '../src/cpu/gemm/args.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { gemmInfo } from '../src/cpu/gemm/index.js';
import type { Gemv } from '../src/cpu/gemm/wasm-engine.js';
import { WasmGemm } from '../src/cpu/gemm/wasm-engine.js';
import { nativeKernels } from '../src/cpu/gemm/native-kernels.js';
import { DEFAULT_KERNEL } from '../src/cpu/gemm/sgemm-kernel.js';
import { loadNodeBuiltins } from '../src/cpu/gemm/worker-pool.js';
import { Rng } from '../src/rng.js';
import { expectSameBits } from '../src/testing.js';

const native = nativeKernels();
const required = process.env.DSV3_REQUIRE_NATIVE_KERNELS === '1';
const saved = { ...gemmConfig };
afterAll(() => Object.assign(gemmConfig, saved));

describe('native kernels: availability', () => {
  it.runIf(required)('are built and load here (DSV3_REQUIRE_NATIVE_KERNELS=1)', () => {
    expect(native, 'build them with `node packages/core/scripts/build-native.mjs`').not.toBeNull();
  });
  it('gemmInfo() reports whether the default engine runs them', () => {
    expect(gemmInfo().nativeKernels).toBe(native !== null);
  });
  it('a DSV3_NATIVE_KERNELS file that is missing or does not load gives a warning, and the wasm kernels run', async () => {
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => {});
    try {
      for (const [file, said] of [
        ['/nonexistent/dsv3_kernels.node', /does not exist/],
        [fileURLToPath(import.meta.url), /do not load here/],
      ] as const) {
        vi.resetModules();
        vi.stubEnv('DSV3_NATIVE_KERNELS', file);
        const fresh = await import('../src/cpu/gemm/native-kernels.js');
        expect(fresh.nativeKernels()).toBeNull();
        expect(warn).toHaveBeenLastCalledWith(expect.stringMatching(said));
      }
    } finally {
      vi.unstubAllEnvs();
      vi.resetModules();
      warn.mockRestore();
    }
  });
  it('are switched off by gemmConfig.nativeKernels', () => {
    gemmConfig.nativeKernels = false;
    try {
      expect(nativeKernels()).toBeNull();
    } finally {
      gemmConfig.nativeKernels = true;
    }
  });
});

describe.skipIf(native === null)('native kernels: the wasm kernels bits', () => {
  const node = loadNodeBuiltins();
  const wasm = new WasmGemm(node, DEFAULT_KERNEL, null);
  const nat = new WasmGemm(node, DEFAULT_KERNEL, native);
  const rng = new Rng(2024);
  const rand = (len: number): Float32Array => rng.fillUniform(new Float32Array(len), -1, 1) as Float32Array;

  it('the engine under test uses them and the other does not', () => {
    expect(nat.native).not.toBeNull();
    expect(wasm.native).toBeNull();
  });

  // [m, n, k, transA, transB, batch]: below / above the tile and block sizes, ragged everywhere.
  const shapes: [number, number, number, boolean, boolean, number][] = [
    [1, 1, 1, false, false, 1],
    [7, 9, 3, false, true, 1],
    [5, 33, 17, true, false, 1],
    [37, 77, 300, false, true, 1],
    [130, 41, 257, true, true, 1],
    [1024, 128, 64, false, true, 1],
    [300, 520, 530, false, false, 1],
    [9, 13, 70, false, true, 6],
    // 7 panels: a tile of 4 and one of 3 (its odd panel on 8 lanes)
    [19, 56, 40, false, false, 1],
  ];
  for (const [m, n, k, transA, transB, batch] of shapes)
    for (const threads of [1, 2])
      it(`f32 GEMM ${batch} x ${m} x ${n} x ${k}${transA ? ' Aᵀ' : ''}${transB ? ' Bᵀ' : ''}, ${threads} thread(s)`, () => {
        gemmConfig.threadMinWork = 0;
        const a = rand(batch * m * k);
        const b = rand(batch * k * n);
        const out = [new Float32Array(batch * m * n), new Float32Array(batch * m * n)];
        [wasm, nat].forEach((e, i) => {
          e.run(normalizeGemm({ m, n, k, a, b, c: out[i] as Float32Array, transA, transB, batch }), threads);
        });
        expectSameBits(out[1] as Float32Array, out[0] as Float32Array);
      });

  it('f32 GEMM with row pitches (one head of [S, H, d] operands) and an output offset', () => {
    const [m, n, k, H] = [45, 38, 64, 3];
    const a = rand(m * H * k);
    const b = rand(n * H * k);
    const out = [new Float32Array(10 + m * H * n), new Float32Array(10 + m * H * n)];
    [wasm, nat].forEach((e, i) =>
      e.run(
        normalizeGemm({
          m,
          n,
          k,
          a,
          aOffset: k,
          lda: H * k,
          b,
          bOffset: 2 * k,
          ldb: H * k,
          transB: true,
          c: out[i] as Float32Array,
          cOffset: 10,
          ldc: H * n,
        }),
        2,
      ),
    );
    expectSameBits(out[1] as Float32Array, out[0] as Float32Array);
  });

  // The weight GEMM (prefill, training's projections): f32, bf16 and FP8 weights widened as packed.
  const bf16Of = (x: Float32Array): Uint16Array => {
    const u = new Uint32Array(x.buffer.slice(0));
    return Uint16Array.from(u, (v) => v >>> 16);
  };
  const fp8Of = (len: number): Uint8Array =>
    Uint8Array.from({ length: len }, () => {
      const v = Math.floor(rng.uniform() * 256);
      return (v & 0x7f) === 0x7f ? 0x3c : v; // no NaN codes
    });
  for (const kind of ['f32', 'bf16', 'fp8'] as const)
    for (const [m, n, k] of [
      [20, 70, 256],
      [129, 300, 384],
      [600, 136, 130],
      [33, 88, 128],
    ] as const)
      it(`weight GEMM, ${kind} weights, ${m} x ${n} x ${k}`, () => {
        gemmConfig.threadMinWork = 0;
        const x = rand(m * k);
        const w = kind === 'f32' ? rand(n * k) : kind === 'bf16' ? bf16Of(rand(n * k)) : fp8Of(n * k);
        const scales =
          kind === 'fp8'
            ? Float32Array.from({ length: Math.ceil(n / 128) * Math.ceil(k / 128) }, () => 0.01 + rng.uniform() * 0.05)
            : undefined;
        const out = [new Float32Array(m * n), new Float32Array(m * n)];
        [wasm, nat].forEach((e, i) => {
          const v: Gemv = {
            m,
            n,
            k,
            x,
            xOffset: 0,
            w,
            wOffset: 0,
            kind,
            scales,
            y: out[i] as Float32Array,
            yOffset: 0,
          };
          e.weightGemmMany([v], 2);
        });
        expectSameBits(out[1] as Float32Array, out[0] as Float32Array);
      });

  it('the workers run them too (they load the addon themselves)', () => {
    gemmConfig.threadMinWork = 0;
    const before = nat.workerTasks();
    const [m, n, k] = [512, 512, 256];
    const c = new Float32Array(m * n);
    for (let r = 0; r < 5; r++) nat.run(normalizeGemm({ m, n, k, a: rand(m * k), b: rand(k * n), c }), 2);
    expect(nat.workerTasks()).toBeGreaterThan(before);
  });
});

describe.skipIf(native === null)('native kernels: bad calls', () => {
  const memory = new WebAssembly.Memory({ initial: 2, maximum: 4, shared: true });
  const view = new Uint8Array(memory.buffer);
  const kernels = native?.addon.bind(view);

  it('each kernel keeps its memory alive (it holds the raw address)', () => {
    for (const fn of Object.values(kernels ?? {})) expect((fn as unknown as { memory: Uint8Array }).memory).toBe(view);
  });

  it('an operand past the memory throws instead of reading it', () => {
    // mc nc kc pa pb c ldc accumulate pages: C's 4 rows of 8 floats from 131000 end past 2 pages.
    expect(() => kernels?.f32Macro(4, 8, 16, 0, 4096, 131_000, 32, 0, 2)).toThrow(/outside the memory/);
    expect(() => kernels?.f32Macro(4, 8, 16, 0, 4096, 8192, 32, 0, 2)).not.toThrow();
  });

  it("C's pitch narrower than its panels, misaligned addresses and wrong arguments throw", () => {
    expect(() => kernels?.f32Macro(4, 16, 16, 0, 4096, 8192, 32, 0, 2)).toThrow(/pitch/);
    expect(() => kernels?.f32Macro(4, 8, 16, 2, 4096, 8192, 32, 0, 2)).toThrow(/misaligned/);
    expect(() => kernels?.f32Macro(4, 8, 16)).toThrow(/wrong number of arguments/);
    expect(() => native?.addon.bind(memory.buffer as unknown as Uint8Array)).toThrow(/typed array/);
  });
});
