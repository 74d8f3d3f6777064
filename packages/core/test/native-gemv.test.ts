// The native GEMV kernels (native/gemv.cc) against the wasm gemv_bf16 / gemv_fp8 they replace
// (gemv_f32 stays wasm), bit for bit: through the engine (gemv, gemvMany; one thread and the workers) and on the
// kernels themselves (one shared memory, a module with them and one without: x / y pitches, row ranges
// starting inside an FP8 128-row block), for m = 1..4 and the large-weight m up to 16, ragged n and k
// (every tail of the unrolled trips), with and without the relaxed multiply-add. Bad addresses throw.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { fp8GemvWorkspace, fp8StageExponent, stageX, type WeightKind } from '../src/cpu/gemm/gemv-kernel.js';
import { nativeKernels } from '../src/cpu/gemm/native-kernels.js';
import { buildSgemmModule, DEFAULT_KERNEL, enableRelaxedSimd } from '../src/cpu/gemm/sgemm-kernel.js';
import type { Gemv } from '../src/cpu/gemm/wasm-engine.js';
import { WasmGemm } from '../src/cpu/gemm/wasm-engine.js';
import { loadNodeBuiltins } from '../src/cpu/gemm/worker-pool.js';
import { Rng } from '../src/rng.js';
import { expectSameBits } from '../src/testing.js';

const native = nativeKernels();
const saved = { ...gemmConfig };
afterEach(() => Object.assign(gemmConfig, saved));
afterAll(() => Object.assign(gemmConfig, saved));

/** The kinds with a native kernel (a job may mix in f32, which stays wasm). */
const KINDS: WeightKind[] = ['bf16', 'fp8'];
const rng = new Rng(1313);
const rand = (len: number, low = -1, high = 1): Float32Array =>
  rng.fillUniform(new Float32Array(len), low, high) as Float32Array;
const bf16Of = (x: Float32Array): Uint16Array => Uint16Array.from(new Uint32Array(x.buffer.slice(0)), (v) => v >>> 16);
/** E4M3 bytes, every code but NaN (0x7f / 0xff): subnormals, zeros of both signs and the largest included. */
const fp8Of = (len: number): Uint8Array =>
  Uint8Array.from({ length: len }, () => {
    const v = Math.floor(rng.uniform() * 256);
    return (v & 0x7f) === 0x7f ? 0x7e : v;
  });
const weightsOf = (kind: WeightKind, len: number): Float32Array | Uint16Array | Uint8Array =>
  kind === 'f32' ? rand(len) : kind === 'bf16' ? bf16Of(rand(len)) : fp8Of(len);
/** Block scales spanning several binades, so the kernels' 2^-t differs between row blocks. */
const scalesOf = (n: number, k: number): Float32Array =>
  Float32Array.from({ length: Math.ceil(n / 128) * Math.ceil(k / 128) }, () => 2 ** (rng.uniform() * 40 - 20));

// Depths covering each kind's trips (32 / 16 / 8 elements by x-row group), single loads, FP8's lone
// 8-block and the scalar tail; widths not a multiple of 4 or 128.
const DEPTHS = [1, 7, 8, 13, 16, 24, 31, 40, 57, 128, 129, 200, 389];

describe.skipIf(native === null)('native GEMV: the wasm kernels bits through the engine', () => {
  const node = loadNodeBuiltins();
  const relaxedHere = enableRelaxedSimd();
  for (const relaxed of relaxedHere ? [false, true] : [false]) {
    describe(relaxed ? 'relaxed multiply-add (fused)' : 'multiply then add', () => {
      gemmConfig.relaxed = relaxed;
      const wasm = new WasmGemm(node, DEFAULT_KERNEL, null);
      const nat = new WasmGemm(node, DEFAULT_KERNEL, native);
      Object.assign(gemmConfig, saved);

      it('the engine under test calls them, with the same multiply-add choice as the other', () => {
        expect(nat.native).not.toBeNull();
        expect(wasm.native).toBeNull();
        expect([nat.relaxed, wasm.relaxed]).toEqual([relaxed, relaxed]);
      });

      const product = (kind: WeightKind, m: number, n: number, k: number, ldx = k, ldy = n): [Gemv, Gemv] => {
        const x = rand((m - 1) * ldx + k, -3, 3);
        const w = weightsOf(kind, n * k);
        const scales = kind === 'fp8' ? scalesOf(n, k) : undefined;
        const one = (): Gemv => ({
          m,
          n,
          k,
          x,
          xOffset: 0,
          ldx,
          w,
          wOffset: 0,
          kind,
          scales,
          y: new Float32Array((m - 1) * ldy + n).fill(7),
          yOffset: 0,
          ldy,
        });
        return [one(), one()];
      };

      for (const kind of KINDS)
        for (const threads of [1, 2])
          it(`${kind} weights, m = 1..4 over ragged depths, ${threads} thread(s)`, () => {
            gemmConfig.threadMinWork = 0;
            gemmConfig.wakeMinWork = 0;
            for (const m of [1, 2, 3, 4])
              for (const k of DEPTHS) {
                const [a, b] = product(kind, m, 37, k);
                wasm.gemv(a, threads);
                nat.gemv(b, threads);
                expectSameBits(b.y, a.y);
              }
          });

      for (const kind of KINDS)
        it(`${kind} weights, the large-weight rows (m up to 16), x and y pitches, 2 threads`, () => {
          gemmConfig.threadMinWork = 0;
          gemmConfig.wakeMinWork = 0;
          for (const m of [5, 7, 11, 16]) {
            const [a, b] = product(kind, m, 300, 389, 400, 310);
            wasm.gemv(a, 2);
            nat.gemv(b, 2);
            expectSameBits(b.y, a.y);
          }
        });

      it('gemvMany: every kind in one job (a shared x), one thread and the workers', () => {
        gemmConfig.threadMinWork = 0;
        gemmConfig.wakeMinWork = 0;
        for (const threads of [1, 2]) {
          const pairs = (['f32', ...KINDS] as const).flatMap((kind) => [
            product(kind, 2, 129, 256),
            product(kind, 3, 260, 200),
          ]);
          wasm.gemvMany(
            pairs.map((p) => p[0]),
            threads,
          );
          nat.gemvMany(
            pairs.map((p) => p[1]),
            threads,
          );
          for (const [a, b] of pairs) expectSameBits(b.y, a.y);
        }
      });
    });
  }

  it('the workers run them too', async () => {
    gemmConfig.threadMinWork = 0;
    gemmConfig.wakeMinWork = 0;
    const nat = new WasmGemm(node, DEFAULT_KERNEL, native);
    const before = nat.workerTasks();
    const [m, n, k] = [1, 2048, 512];
    const w = fp8Of(n * k),
      scales = scalesOf(n, k);
    // (the caller takes every task until the new worker has started, and on a loaded host it may again
    // before the worker wakes: tries spaced out, up to 2 s)
    for (let r = 0; r < 100 && nat.workerTasks() === before; r++) {
      if (r > 0) await new Promise((done) => setTimeout(done, 20));
      nat.gemv(
        { m, n, k, x: rand(k), xOffset: 0, w, wOffset: 0, kind: 'fp8', scales, y: new Float32Array(n), yOffset: 0 },
        2,
      );
    }
    expect(nat.workerTasks()).toBeGreaterThan(before);
  });
});

/** Two instances of the kernels module on one shared memory: the wasm kernels and the native ones. */
function kernelPair(relaxed: boolean) {
  const pages = 64;
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  type Exports = Record<string, (...args: number[]) => void>;
  const instance = (withNative: boolean): Exports => {
    const module = new WebAssembly.Module(buildSgemmModule(DEFAULT_KERNEL, true, pages, relaxed, withNative));
    const imports = withNative ? native!.addon.bind(new Uint8Array(memory.buffer)) : {};
    return new WebAssembly.Instance(module, { env: { memory, ...imports } }).exports as unknown as Exports;
  };
  return { memory, wasm: instance(false), nat: instance(true) };
}

describe.skipIf(native === null)('native GEMV: the kernels themselves', () => {
  for (const relaxed of enableRelaxedSimd() ? [false, true] : [false])
    for (const kind of KINDS)
      it(`${kind} weights${relaxed ? ', fused' : ''}: x / y pitches, row ranges from inside a 128-row block`, () => {
        const { memory, wasm, nat } = kernelPair(relaxed);
        const f32 = new Float32Array(memory.buffer);
        const eb = kind === 'bf16' ? 2 : 1;
        for (const [m, n, k, n0, n1] of [
          [1, 300, 389, 0, 300],
          [3, 260, 200, 4, 259],
          [4, 200, 57, 132, 200],
          [2, 140, 136, 60, 140],
        ] as const) {
          const ldx = k + 5,
            ldy = n + 3,
            ldw = k * eb + 8 * eb;
          const [X, W, S, Y1, Y2, XS] = [4096, 65536, 1 << 20, 1 << 21, (1 << 21) + (1 << 19), 3 << 20];
          const x = rand(m * ldx, -3, 3);
          const e = kind === 'fp8' ? fp8StageExponent(x, 0, m, k, ldx) : 120;
          stageX(kind, x, 0, m, k, f32, X / 4, ldx, e, ldx);
          const w = weightsOf(kind, n * (ldw / eb));
          new Uint8Array(memory.buffer, W, w.byteLength).set(new Uint8Array(w.buffer));
          const s = scalesOf(n, k);
          f32.set(s, S / 4);
          f32.fill(7, Y1 / 4, Y2 / 4 + m * ldy);
          expect(fp8GemvWorkspace(m, k)).toBeLessThan(1 << 20);
          const args = (y: number): number[] => [
            X,
            m,
            ldx * 4,
            k,
            W,
            ldw,
            n0,
            n1,
            y,
            ldy * 4,
            S,
            Math.ceil(k / 128) * 4,
            e,
            XS,
          ];
          wasm[`gemv_${kind}`]!(...args(Y1));
          nat[`gemv_${kind}`]!(...args(Y2));
          expectSameBits(f32.subarray(Y2 / 4, Y2 / 4 + m * ldy), f32.subarray(Y1 / 4, Y1 / 4 + m * ldy));
        }
      });
});

describe.skipIf(native === null)('native GEMV: bad calls', () => {
  const memory = new WebAssembly.Memory({ initial: 2, maximum: 4, shared: true });
  const kernels = native?.addon.bind(new Uint8Array(memory.buffer)) as Record<string, (...a: number[]) => void>;
  // x m ldx k w ldw n0 n1 y ldy [s lds e xs] fma pages
  it('an operand past the memory throws instead of reading or writing it', () => {
    expect(() => kernels.gemvBf16!(0, 1, 256, 64, 4096, 128, 0, 64, 120_000, 256, 0, 2)).not.toThrow();
    expect(() => kernels.gemvBf16!(0, 1, 256, 64, 4096, 128, 0, 500, 130_000, 256, 0, 2)).toThrow(/outside the memory/);
    expect(() => kernels.gemvBf16!(0, 1, 256, 64, 4096, 128, 0, 1000, 8192, 256, 0, 2)).toThrow(/outside the memory/);
    expect(() => kernels.gemvFp8!(0, 1, 256, 64, 4096, 64, 0, 8, 8192, 256, 131_072, 4, 0, 16384, 0, 2)).toThrow(
      /scales or the workspace/,
    );
    expect(() => kernels.gemvFp8!(0, 1, 256, 64, 4096, 64, 0, 8, 8192, 256, 16000, 4, 0, 131_000, 0, 2)).toThrow(
      /scales or the workspace/,
    );
  });
  it('misaligned operands, short pitches and wrong arguments throw', () => {
    expect(() => kernels.gemvBf16!(2, 1, 256, 64, 4096, 128, 0, 4, 8192, 256, 0, 2)).toThrow(/misaligned/);
    expect(() => kernels.gemvBf16!(0, 1, 256, 64, 4097, 128, 0, 4, 8192, 256, 0, 2)).toThrow(/misaligned/);
    expect(() => kernels.gemvBf16!(0, 2, 128, 64, 4096, 128, 0, 4, 8192, 256, 0, 2)).toThrow(/pitch/);
    expect(() => kernels.gemvBf16!(0, 1, 256, 64, 4096, 128, 0, 4, 8192, 256)).toThrow(/wrong number of arguments/);
  });
});
