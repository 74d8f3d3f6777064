// f16 compute on WebGPU (half.ts + the tiled GEMM's f16 loads): f32 activations against f16 weights
// and f16 × f16 products against float64 references on ragged shapes, with native f16 loads (the
// device has shader-f16) and with the feature withheld (bit-decoded loads), and the clear error of
// requireShaderF16. Bounds, elementwise, from f16's unit roundoff u = 2^-11 on each rounded operand
// plus f32 accumulation (K · 2^-24), all relative to Σ_k |a_ik| |b_kj|.
import { afterAll, describe, expect, it } from 'vitest';
import { decodeF16, encodeF16, fromRaw, matmul } from '../../src/index.js';
import { requireShaderF16 } from '../../src/webgpu/half.js';
import { gemmCode, TILE_SMALL_M } from '../../src/webgpu/kernels/matmul.js';
import { layoutKey } from '../../src/webgpu/wgsl.js';
import { acquireGpu, relErr, rnd } from './gpu.js';

const gpu = await acquireGpu();
const native = gpu?.features.shaderF16 === true;
// The same adapter without shader-f16: the path of a device that lacks it.
const plain = gpu ? await acquireGpu({ withholdFeatures: ['shader-f16'] }) : null;
afterAll(() => {
  gpu?.dispose();
  plain?.dispose();
});

const U = 2 ** -11;
const roundF16 = (v: ArrayLike<number>): Float32Array => decodeF16(encodeF16(v));

/** op(A) [m, k] · op(B) [k, n] in float64 and Σ|a||b| per output, from row-major stored operands. */
function product64(
  A: ArrayLike<number>,
  B: ArrayLike<number>,
  m: number,
  n: number,
  k: number,
  transA: boolean,
  transB: boolean,
): { y: Float64Array; mag: Float64Array } {
  const y = new Float64Array(m * n);
  const mag = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      let a = 0;
      for (let kk = 0; kk < k; kk++) {
        const av = A[transA ? kk * m + i : i * k + kk]!;
        const bv = B[transB ? j * k + kk : kk * n + j]!;
        s += av * bv;
        a += Math.abs(av * bv);
      }
      y[i * n + j] = s;
      mag[i * n + j] = a;
    }
  }
  return { y, mag };
}

/** Largest |got − want| / (bound · mag): ≤ 1 when every element is within its bound. */
function worstRatio(got: ArrayLike<number>, want: Float64Array, mag: Float64Array, bound: number): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const r = Math.abs(got[i]! - want[i]!) / (bound * mag[i]! + 1e-30);
    if (!(r <= worst)) worst = Number.isNaN(r) ? Infinity : r;
  }
  return worst;
}

const SHAPES: [m: number, n: number, k: number][] = [
  [1, 67, 129],
  [7, 130, 65],
  [33, 40, 72],
  [64, 96, 128],
  [3, 5, 2],
];

describe.skipIf(!gpu)('webgpu f16 compute', () => {
  for (const [label, be] of [
    ['native f16 loads (shader-f16)', native ? gpu : null],
    ['bit-decoded f16 loads (shader-f16 withheld)', plain],
  ] as const) {
    it.skipIf(!be)(`f32 activations × f16 weights, ${label}: f32 result against float64`, async () => {
      let seed = 1;
      for (const [m, n, k] of SHAPES) {
        for (const transB of [true, false]) {
          const x = Float32Array.from(rnd(m * k, seed++));
          const w = Float32Array.from(rnd(n * k, seed++));
          const xt = fromRaw('f32', [m, k], x, be!);
          const wt = fromRaw('f16', transB ? [n, k] : [k, n], encodeF16(w), be!);
          const y = matmul(xt, wt, { transB });
          expect(y.dtype).toBe('f32');
          const got = await y.data();
          // Against the exact product of the operands as stored: f32 accumulation only.
          const stored = product64(x, roundF16(w), m, n, k, false, transB);
          expect(relErr(got, stored.y), `${m}x${n}x${k} tB=${transB}`).toBeLessThanOrEqual(1e-5);
          expect(worstRatio(got, stored.y, stored.mag, k * 2 ** -24)).toBeLessThanOrEqual(1);
          // Against the f32 weights it came from: one rounding of each weight, u = 2^-11.
          const exact = product64(x, w, m, n, k, false, transB);
          expect(worstRatio(got, exact.y, exact.mag, U + k * 2 ** -24)).toBeLessThanOrEqual(1);
          for (const t of [xt, wt, y]) t.dispose();
        }
      }
    });

    it.skipIf(!be)(`f16 × f16, ${label}: every transpose, f16 result against float64`, async () => {
      let seed = 100;
      for (const [m, n, k] of SHAPES) {
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            const a = rnd(m * k, seed++);
            const b = rnd(n * k, seed++);
            const at = fromRaw('f16', transA ? [k, m] : [m, k], encodeF16(a), be!);
            const bt = fromRaw('f16', transB ? [n, k] : [k, n], encodeF16(b), be!);
            const y = matmul(at, bt, { transA, transB });
            expect(y.dtype).toBe('f16');
            const got = await y.data();
            // Both operands rounded (2u + u²), f32 accumulation, then the result rounded to f16 (u · |y|,
            // which is at most u · Σ|a||b|).
            const exact = product64(a, b, m, n, k, transA, transB);
            const bound = 2 * U + U * U + k * 2 ** -24 + U * (1 + 2 * U + k * 2 ** -24);
            expect(
              worstRatio(got, exact.y, exact.mag, bound),
              `${m}x${n}x${k} ${transA} ${transB}`,
            ).toBeLessThanOrEqual(1);
            for (const t of [at, bt, y]) t.dispose();
          }
        }
      }
    });
  }

  it.skipIf(!native || !plain)('native and bit-decoded f16 loads give bitwise identical products', async () => {
    let seed = 300;
    for (const [m, n, k] of SHAPES) {
      const x = Float32Array.from(rnd(m * k, seed++));
      const w = encodeF16(rnd(n * k, seed++));
      const run = async (be: typeof gpu): Promise<Float32Array> => {
        const y = matmul(fromRaw('f32', [m, k], x, be!), fromRaw('f16', [n, k], w, be!), { transB: true });
        return (await y.data()) as Float32Array;
      };
      expect(await run(gpu)).toEqual(await run(plain));
    }
  });

  it.skipIf(!native)('the native shader binds f16 storage (vec4<f16> loads) and builds', async () => {
    const code = gemmCode(TILE_SMALL_M, { vecA: true, vecB: true }, 'f32', 'f16', true);
    expect(code.startsWith('enable f16;')).toBe(true);
    expect(code).toContain('var<storage, read> B: array<vec4<f16>>');
    expect(code).toContain('var<storage, read> A: array<vec4<f32>>');
    const decoded = gemmCode(TILE_SMALL_M, { vecA: true, vecB: true }, 'f32', 'f16', false);
    expect(decoded).not.toContain('enable f16;');
    expect(decoded).toContain('var<storage, read> B: array<u32>');
    const decls = [{ name: 'C', write: true }, { name: 'A' }, { name: 'B' }];
    for (const c of [code, gemmCode(TILE_SMALL_M, { vecA: false, vecB: false }, 'f16', 'f16', true)]) {
      const r = await gpu!.pipelines.tryBuild(c, layoutKey(decls), 'f16-gemm');
      expect(r.error).toBe('');
    }
  });

  it.skipIf(!plain)('requireShaderF16 names the missing feature; a device with it passes', () => {
    expect(plain!.features.shaderF16).toBe(false);
    expect(() => requireShaderF16(plain!, 'loadModel')).toThrow(
      /loadModel: f16 compute needs the WebGPU feature 'shader-f16'/,
    );
    if (native) expect(() => requireShaderF16(gpu!, 'loadModel')).not.toThrow();
  });
});
