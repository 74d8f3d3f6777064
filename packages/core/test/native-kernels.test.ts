// The native kernels (native/kernels.cc) against the wasm kernels they replace: every product route
// that ends in the macro-kernel (the f32 GEMM with B packed by the job or by each task, batched and
// pitched; the weight GEMM widening f32 / bf16 / FP8 weights as it packs) gives the same bits on an
// engine built with them as on one without, on ragged shapes, on one thread and on the workers. Bad
// addresses throw instead of touching memory outside the wasm heap. Where the addon is not built or the
// CPU lacks AVX-512 the suite skips, unless DSV3_REQUIRE_NATIVE_KERNELS=1 (CI) makes that a failure.
import { afterAll, describe, expect, it } from 'vitest';
import { normalizeGemm } from '../src/cpu/gemm/args.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import type { Gemv } from '../src/cpu/gemm/wasm-engine.js';
import { WasmGemm } from '../src/cpu/gemm/wasm-engine.js';
import { nativeKernels } from '../src/cpu/gemm/native-kernels.js';
import { buildSgemmModule, DEFAULT_KERNEL } from '../src/cpu/gemm/sgemm-kernel.js';
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

// The packing routines alone: the wasm module and the native one instantiated on one memory, each
// packing the same operand into its own panels, on every path (rows contiguous, panel values
// contiguous, any strides; full and ragged panels, depth tails; f32 / bf16 / FP8 weights).
describe.skipIf(native === null)('native kernels: packing, the wasm panels bits', () => {
  const pages = 64;
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  const bytes = new Uint8Array(memory.buffer);
  const instance = (withNative: boolean) => {
    const module = new WebAssembly.Module(buildSgemmModule(DEFAULT_KERNEL, true, pages, false, withNative));
    const imports = withNative ? native?.addon.bind(bytes) : {};
    return new WebAssembly.Instance(module, { env: { memory, ...imports } }).exports as Record<
      string,
      (...args: number[]) => void
    >;
  };
  const [wasmK, natK] = [instance(false), instance(true)];
  const rng = new Rng(7);
  // Source bytes at SRC (random, including NaN / -0 / subnormal f32 bit patterns), panels at OUT_W / OUT_N.
  const SRC = 0;
  const OUT_W = 1 << 21;
  const OUT_N = 3 << 20;
  const srcBytes = 1 << 20;
  for (let i = 0; i < srcBytes; i++) bytes[SRC + i] = Math.floor(rng.uniform() * 256);
  const same = (panelBytes: number): void => {
    expectSameBits(bytes.subarray(OUT_N, OUT_N + panelBytes), bytes.subarray(OUT_W, OUT_W + panelBytes));
  };
  const poison = (panelBytes: number): void => {
    // the same bytes past both: neither kernel writes beyond its panels
    bytes.fill(0xa5, OUT_W, OUT_W + panelBytes + 64);
    bytes.fill(0xa5, OUT_N, OUT_N + panelBytes + 64);
  };

  // [count, kc, rs, cs] in bytes: rows contiguous (cs 4), panel values contiguous (rs 4), strided.
  const layouts: [number, number, number, number][] = [
    [8, 8, 4 * 300, 4],
    [13, 37, 4 * 301, 4],
    [3, 5, 4 * 7, 4],
    [16, 256, 4 * 256, 4],
    [13, 37, 4, 4 * 64],
    [5, 9, 4, 4 * 5],
    [11, 19, 4 * 40, 4 * 3],
    [1, 1, 4, 4],
  ];
  for (const [name, R] of [
    ['packA', 4],
    ['packB', 8],
  ] as const)
    for (const [count, kc, rs, cs] of layouts)
      it(`${name}: ${count} rows x ${kc} depths, strides ${rs} / ${cs} bytes`, () => {
        const panelBytes = Math.ceil(count / R) * R * kc * 4;
        poison(panelBytes);
        for (const [k, out] of [
          [wasmK, OUT_W],
          [natK, OUT_N],
        ] as const)
          k[name]?.(SRC + 12, rs, cs, count, kc, out);
        same(panelBytes + 64);
      });

  // packW_<kind>(src, ldw, count, kc, dst, s, lds, col0, p0): W's rows [col0, col0 + count), depths from p0.
  const SCALES = (1 << 20) - 4096;
  for (const kind of ['f32', 'bf16', 'fp8'] as const) {
    const eb = { f32: 4, bf16: 2, fp8: 1 }[kind];
    for (const [count, kc, col0, p0] of [
      [8, 256, 0, 0],
      [21, 131, 128, 128],
      [5, 7, 8, 0],
      [136, 256, 120, 256],
    ] as const)
      it(`packW_${kind}: ${count} columns x ${kc} depths from column ${col0}, depth ${p0}`, () => {
        const ldw = 512 * eb;
        // FP8 scales: finite positive f32 (the weight's block scales times 2^120), 4 per row.
        const lds = 16;
        const f32 = new Float32Array(memory.buffer, SCALES, 8 * 4);
        for (let i = 0; i < f32.length; i++) f32[i] = 2 ** 120 * (0.01 + rng.uniform() * 0.05);
        const panelBytes = Math.ceil(count / 8) * 8 * kc * 4;
        poison(panelBytes);
        for (const [k, out] of [
          [wasmK, OUT_W],
          [natK, OUT_N],
        ] as const)
          k[`packW_${kind}`]?.(SRC + 64, ldw, count, kc, out, SCALES, lds, col0, p0);
        same(panelBytes + 64);
      });
  }

  it('a pack past the memory throws instead of touching it', () => {
    const kernels = native?.addon.bind(bytes);
    const end = pages * 65536;
    // 8 rows 128 bytes apart x 16 depths from end - 512: the last rows lie past the end.
    expect(() => kernels?.f32PackB(end - 512, 128, 4, 8, 16, OUT_N, pages)).toThrow(/outside the memory/);
    expect(() => kernels?.f32PackB(end - 7 * 128 - 64, 128, 4, 8, 16, OUT_N, pages)).not.toThrow();
    expect(() => kernels?.f32PackA(0, 4, 16, 4, 16, end - 255, pages)).toThrow(/misaligned/);
    expect(() => kernels?.f32PackA(0, 4, 16, 4, 16, end - 128, pages)).toThrow(/outside the memory/);
    expect(() => kernels?.packW_fp8(0, 256, 8, 16, OUT_N, end - 4, 4, 0, 0, pages)).not.toThrow();
    expect(() => kernels?.packW_fp8(0, 256, 8, 16, OUT_N, end - 4, 4, 0, 128, pages)).toThrow(/scales/);
    expect(() => kernels?.packW_fp8(0, 256, 8, 16, OUT_N, 0, 4, 0, 64, pages)).toThrow(/scale block/);
    expect(() => kernels?.packW_bf16(end - 100, 64, 8, 16, OUT_N, 0, 0, 0, 0, pages)).toThrow(/outside the memory/);
  });
});

describe.skipIf(native === null)('native kernels: bad calls', () => {
  const memory = new WebAssembly.Memory({ initial: 2, maximum: 4, shared: true });
  const kernels = native?.addon.bind(new Uint8Array(memory.buffer));

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
