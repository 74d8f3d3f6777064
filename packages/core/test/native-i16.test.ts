// The native i16 macro-kernel (native/i16-gemm.cc) against the wasm one it replaces (i16-gemm-kernel.ts):
// weight products on the i16 route (gemmConfig.prefillActivations 'i16') with bf16 and FP8 weights give
// the same bits on an engine built with the native kernels as on one without — ragged rows, columns and
// depths (depths not a multiple of 128, several KC blocks so C accumulates), on one thread and on the
// workers, non-finite activations included. Bad addresses throw instead of touching memory outside the
// wasm heap. Skips where the addon is not built or the CPU lacks AVX-512 (native-kernels.test.ts makes
// that a failure under DSV3_REQUIRE_NATIVE_KERNELS=1). DSV3_NATIVE_NO_VNNI=1 runs the macro-kernel's path for
// CPUs without VNNI (pmaddwd + add) on one with it: the same tests, the same bits.
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { stageFp8Scales } from '../src/cpu/gemm/fp8-weight.js';
import { i16PanelBytes } from '../src/cpu/gemm/i16-gemm-kernel.js';
import { genI16WeightGemm } from '../src/cpu/gemm/i16-weight-gemm.js';
import { NATIVE_IMPORTS, nativeKernels } from '../src/cpu/gemm/native-kernels.js';
import { DEFAULT_KERNEL } from '../src/cpu/gemm/sgemm-kernel.js';
import { ModuleBuilder } from '../src/cpu/gemm/wasm-emitter.js';
import type { Gemv } from '../src/cpu/gemm/wasm-engine.js';
import { WasmGemm } from '../src/cpu/gemm/wasm-engine.js';
import { loadNodeBuiltins } from '../src/cpu/gemm/worker-pool.js';
import { Rng } from '../src/rng.js';
import { expectSameBits } from '../src/testing.js';

const native = nativeKernels();
const saved = { ...gemmConfig };
afterAll(() => Object.assign(gemmConfig, saved));

type Kind = 'bf16' | 'fp8';

describe.skipIf(native === null)('native i16 macro-kernel: the wasm kernel bits', () => {
  const node = loadNodeBuiltins();
  const wasm = new WasmGemm(node, DEFAULT_KERNEL, null);
  const nat = new WasmGemm(node, DEFAULT_KERNEL, native);
  const rng = new Rng(1613);
  const rand = (len: number): Float32Array => rng.fillUniform(new Float32Array(len), -1, 1) as Float32Array;
  const bf16Of = (x: Float32Array): Uint16Array => Uint16Array.from(new Uint32Array(x.buffer), (v) => v >>> 16);
  const fp8Of = (len: number): Uint8Array =>
    Uint8Array.from({ length: len }, () => {
      const v = Math.floor(rng.uniform() * 256);
      return (v & 0x7f) === 0x7f ? 0x3c : v; // no NaN codes
    });

  beforeEach(() => {
    gemmConfig.threadMinWork = 0;
    gemmConfig.prefillActivations = 'i16';
  });

  /** A weight product of x [m, k] (rows ldx apart) and a random weight [n, k] of `kind`, y fresh. */
  const product = (kind: Kind, m: number, n: number, k: number, x: Float32Array, ldx = k): Gemv => ({
    m,
    n,
    k,
    x,
    xOffset: 0,
    ldx,
    w: kind === 'bf16' ? bf16Of(rand(n * k)) : fp8Of(n * k),
    wOffset: 0,
    kind,
    scales:
      kind === 'fp8'
        ? Float32Array.from({ length: Math.ceil(n / 128) * Math.ceil(k / 128) }, () => 0.01 + rng.uniform() * 0.05)
        : undefined,
    y: new Float32Array(m * n),
    yOffset: 0,
  });

  /** The products run on `engine` into fresh outputs (the products' own y untouched). */
  const run = (engine: WasmGemm, vs: Gemv[], threads: number): Float32Array[] => {
    const ys = vs.map((v) => new Float32Array(v.y.length));
    engine.weightGemmMany(
      vs.map((v, i) => ({ ...v, y: ys[i] as Float32Array })),
      threads,
    );
    return ys;
  };

  const expectSameOnBoth = (vs: Gemv[], threads: number): void => {
    const want = run(wasm, vs, threads);
    const got = run(nat, vs, threads);
    want.forEach((w, i) => expectSameBits(got[i] as Float32Array, w, `product ${i}`, { nan: 'bits' }));
  };

  it('the engine under test uses them and the other does not', () => {
    expect(nat.native).not.toBeNull();
    expect(wasm.native).toBeNull();
  });

  it('the products below take the i16 route (their results differ from the f32 route)', () => {
    const v = product('bf16', 37, 70, 300, rand(37 * 300));
    const i16 = run(nat, [v], 1)[0] as Float32Array;
    gemmConfig.prefillActivations = 'f32';
    const f32 = run(nat, [v], 1)[0] as Float32Array;
    expect(i16.some((y, i) => y !== f32[i])).toBe(true);
  });

  // [m, n, k]: ragged rows (past 8-row tiles and 4-row panels), columns (past 8-column panels), depths
  // (odd, not a multiple of 128, past the 256-depth KC block: C accumulates), the model's shapes.
  const shapes: [number, number, number][] = [
    [16, 8, 128],
    [17, 9, 129],
    [23, 70, 63],
    [37, 70, 300],
    [130, 41, 257],
    [61, 136, 641],
    [200, 256, 1024],
    [48, 1024, 256],
  ];
  for (const kind of ['bf16', 'fp8'] as const)
    for (const [m, n, k] of shapes)
      for (const threads of [1, 2])
        it(`${kind} weights, ${m} x ${n} x ${k}, ${threads} thread(s)`, () => {
          expectSameOnBoth([product(kind, m, n, k, rand(m * k))], threads);
        });

  it('products sharing one x (quantized once) and x with a row pitch', () => {
    const [m, k] = [45, 384];
    const x = rand(m * (k + 7));
    expectSameOnBoth(
      [product('bf16', m, 96, k, x, k + 7), product('bf16', m, 200, k, x, k + 7), product('fp8', m, 130, k, x, k + 7)],
      2,
    );
  });

  it('the workers run them too (they load the addon themselves)', () => {
    const before = nat.workerTasks();
    const v = product('bf16', 256, 1024, 512, rand(256 * 512));
    // the workers start while the caller works: run until they have taken tasks (a few jobs)
    for (let r = 0; r < 50 && nat.workerTasks() === before; r++) run(nat, [v], 2);
    expect(nat.workerTasks()).toBeGreaterThan(before);
  });

  it('non-finite activations: the NaN outputs they reach, bit for bit', () => {
    const [m, n, k] = [33, 40, 300];
    const x = rand(m * k);
    x[5 * k + 3] = Number.NaN;
    x[17 * k + 200] = Number.POSITIVE_INFINITY;
    x[30 * k + 299] = Number.NEGATIVE_INFINITY;
    for (const kind of ['bf16', 'fp8'] as const) expectSameOnBoth([product(kind, m, n, k, x)], 2);
  });
});

describe.skipIf(native === null)('native i16 weight packing: the wasm kernel bytes', () => {
  // One memory, the wasm module and one importing the native kernels: packWI16_<kind> of each on the
  // same weights into two places, compared byte for byte (non-finite weights included, whose outputs
  // are NaN whatever their words, so only the packing's bytes show them).
  const PAGES = 64;
  const memory = new WebAssembly.Memory({ initial: PAGES, maximum: PAGES, shared: true });
  const instance = (imports: boolean): Record<string, (...args: number[]) => void> => {
    const mb = new ModuleBuilder(
      { module: 'env', name: 'memory', initialPages: 1, maximumPages: PAGES, shared: true },
      imports ? Object.values(NATIVE_IMPORTS) : [],
    );
    genI16WeightGemm(mb, DEFAULT_KERNEL);
    const env = { memory, ...(imports ? native?.addon.bind(new Uint8Array(memory.buffer)) : {}) };
    return new WebAssembly.Instance(new WebAssembly.Module(mb.emit()), { env }).exports as Record<
      string,
      (...args: number[]) => void
    >;
  };
  const [wasmEx, natEx] = [instance(false), instance(true)];
  const bytes = new Uint8Array(memory.buffer); // (and the instances) keep the memory alive
  const rng = new Rng(77);
  const [W_AT, S_AT, OUT_A, OUT_B] = [4096, 1 << 20, 2 << 20, 3 << 20];

  /** Random weight bytes: bf16 of all magnitudes with NaN / ±Inf / zeros / subnormals sprinkled; FP8 any code. */
  const fillWeights = (kind: Kind, len: number): void => {
    const u16 = new Uint16Array(memory.buffer, W_AT, len);
    for (let i = 0; i < len; i++) {
      const r = rng.uniform();
      if (kind === 'fp8') bytes[W_AT + i] = Math.floor(r * 256);
      else
        u16[i] =
          r < 0.01
            ? [0x7fc0, 0x7f80, 0xff80, 0x0000, 0x8000, 0x0001][i % 6]!
            : (Math.floor(rng.uniform() * 65536) & 0x80ff) | ((Math.floor(rng.uniform() * 40) + 100) << 7);
    }
  };

  // [count, kc, ldw extra depths, col0]: ragged panels, blocks and depths (len mod 8 tails, odd blocks).
  const cases: [number, number, number, number][] = [
    [1, 1, 0, 0],
    [3, 7, 5, 0],
    [8, 128, 0, 0],
    [9, 129, 3, 128],
    [17, 200, 0, 256],
    [16, 256, 8, 0],
    [21, 63, 1, 131],
  ];
  for (const kind of ['bf16', 'fp8'] as const)
    for (const [count, kc, extra, col0] of cases)
      it(`packWI16_${kind}: ${count} columns x ${kc} depths, col0 ${col0}`, () => {
        const eb = kind === 'bf16' ? 2 : 1;
        const ldw = (kc + extra + (extra % 2)) * eb;
        fillWeights(kind, (count * ldw) / eb + kc);
        // FP8 block scales [ceil((col0 + count) / 128), 4] staged times 2^120, p0 = 128
        const lds = 4 * 4;
        const scales = Float32Array.from({ length: 64 }, () => 0.001 + rng.uniform() * 0.05);
        stageFp8Scales(scales, 64, new Float32Array(memory.buffer), S_AT / 4);
        const panelBytes = Math.ceil(count / 8) * i16PanelBytes(8, kc);
        bytes.fill(0xa5, OUT_A, OUT_A + panelBytes + 64);
        bytes.fill(0x5a, OUT_B, OUT_B + panelBytes + 64);
        const args = (dst: number): number[] => [W_AT, ldw, count, kc, dst, S_AT, lds, col0, 128];
        wasmEx[`packWI16_${kind}`]?.(...args(OUT_A));
        natEx[`packWI16_${kind}`]?.(...args(OUT_B));
        expectSameBits(bytes.subarray(OUT_B, OUT_B + panelBytes), bytes.subarray(OUT_A, OUT_A + panelBytes), 'B~');
        // nothing written past the panels
        expect(bytes.subarray(OUT_B + panelBytes, OUT_B + panelBytes + 64).every((b) => b === 0x5a)).toBe(true);
      });
});

describe.skipIf(native === null)('native i16 macro-kernel: bad calls', () => {
  const memory = new WebAssembly.Memory({ initial: 2, maximum: 4, shared: true });
  const kernels = native?.addon.bind(new Uint8Array(memory.buffer));
  // The memory's size in pages, read from it at each call: the kernels do not keep the memory alive
  // (an engine's wasm instance does), so a test holding only them would let it be collected.
  const pages = (): number => memory.buffer.byteLength / 65536;
  // mc nc kc pa pb c ldc accumulate pages; 4 rows x 8 columns x 128 depths: A~ 1040 bytes, B~ 2080.

  it('an operand past the memory throws instead of reading it', () => {
    expect(() => kernels?.i16Macro(4, 8, 128, 0, 4096, 131_000, 32, 0, pages())).toThrow(/outside the memory/);
    expect(() => kernels?.i16Macro(4, 8, 128, 130_100, 4096, 8192, 32, 0, pages())).toThrow(/outside the memory/);
    expect(() => kernels?.i16Macro(4, 8, 128, 0, 130_000, 8192, 32, 0, pages())).toThrow(/outside the memory/);
    expect(() => kernels?.i16Macro(4, 8, 128, 0, 4096, 8192, 32, 0, pages())).not.toThrow();
  });

  it("C's pitch narrower than its panels, misaligned addresses and wrong arguments throw", () => {
    expect(() => kernels?.i16Macro(4, 16, 128, 0, 4096, 8192, 32, 0, pages())).toThrow(/pitch/);
    expect(() => kernels?.i16Macro(4, 8, 128, 2, 4096, 8192, 32, 0, pages())).toThrow(/misaligned/);
    expect(() => kernels?.i16Macro(4, 8, 128)).toThrow(/wrong number of arguments/);
  });

  it('the weight packing: an operand past the memory or misaligned throws', () => {
    // src ldw count kc dst s lds col0 p0 pages: 8 bf16 rows of 128 depths (2 KiB), B~ 2080 bytes.
    expect(() => kernels?.i16PackWBf16(130_000, 256, 8, 128, 0, 0, 0, 0, 0, pages())).toThrow(/outside the memory/);
    expect(() => kernels?.i16PackWBf16(0, 256, 8, 128, 130_000, 0, 0, 0, 0, pages())).toThrow(/outside the memory/);
    expect(() => kernels?.i16PackWBf16(0, 256, 8, 128, 4096, 0, 0, 0, 0, pages())).not.toThrow();
    expect(() => kernels?.i16PackWFp8(0, 128, 8, 128, 4096, 131_068, 16, 0, 128, pages())).toThrow(
      /outside the memory/,
    );
    expect(() => kernels?.i16PackWFp8(0, 128, 8, 128, 4096, 8192, 16, 0, 128, pages())).not.toThrow();
    expect(() => kernels?.i16PackWBf16(1, 256, 8, 128, 4096, 0, 0, 0, 0, pages())).toThrow(/misaligned/);
  });
});
