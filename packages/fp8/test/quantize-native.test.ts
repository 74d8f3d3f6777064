// The block-scaled quantizers' native path (core's native/fp8-quantize.cc, AVX-512) against their
// JavaScript loops, bit for bit — quantizeWeight (block x block tiles, scale m / 448), quantizeActivation
// (1 x block, m · f32(1/448)) and quantizeActivationColumnwise (block x 1): ragged shapes and blocks,
// all-zero and tiny tiles (the amax floor), subnormal and saturating quotients, negative zeros; a
// non-finite input still gets the JavaScript path's error. The suite skips where the native kernels do
// not run, unless DSV3_REQUIRE_NATIVE_KERNELS=1 (CI).
import { gemmInfo, quantizeE4M3TilesNative, Rng } from '@dsv3/core';
import { expectSameBits } from '@dsv3/core/testing';
import { describe, expect, it } from 'vitest';
import {
  quantizeActivation,
  quantizeActivationColumnwise,
  quantizeActivationColumnwiseJs,
  quantizeActivationJs,
  quantizeWeight,
  quantizeWeightJs,
} from '../src/quant';

/** Each quantizer with its JavaScript reference. */
const QUANTIZERS = [
  ['quantizeWeight', quantizeWeight, quantizeWeightJs],
  ['quantizeActivation', quantizeActivation, quantizeActivationJs],
  ['quantizeActivationColumnwise', quantizeActivationColumnwise, quantizeActivationColumnwiseJs],
] as const;

const native = gemmInfo().nativeKernels;
const required = process.env.DSV3_REQUIRE_NATIVE_KERNELS === '1';

/** Rows of mixed magnitudes: normal, tiny (subnormal after scaling), zeros, negative zeros, outliers. */
function matrix(rows: number, cols: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const w = new Float32Array(rows * cols);
  for (let i = 0; i < w.length; i++) {
    const kind = rng.integer(0, 10);
    const v = rng.normal();
    w[i] = kind < 6 ? v * 0.02 : kind < 8 ? v * 1e-6 : kind === 8 ? (rng.uniform() < 0.5 ? 0 : -0) : v * 30;
  }
  return w;
}

describe('quantizeWeight: native path', () => {
  it.runIf(required)('runs here (DSV3_REQUIRE_NATIVE_KERNELS=1)', () => {
    expect(native).toBe(true);
  });

  it.runIf(native)('equals the JavaScript loops bit for bit on ragged shapes and blocks', () => {
    let seed = 1;
    for (const [name, fast, js] of QUANTIZERS)
      for (const [rows, cols] of [
        [1, 1],
        [3, 17],
        [128, 128],
        [130, 300],
        [257, 1024],
        [64, 129],
        [512, 1024],
      ] as const)
        for (const block of [128, 64, 32, 7]) {
          const w = matrix(rows, cols, seed++);
          const got = fast(w, [rows, cols], { block });
          const want = js(w, [rows, cols], { block });
          expectSameBits(got.q, want.q, `${name} q ${rows}x${cols} block ${block}`);
          expectSameBits(got.scales, want.scales, `${name} scales ${rows}x${cols} block ${block}`);
          expect(got.scaleShape).toEqual(want.scaleShape);
        }
  });

  it.runIf(native)('all-zero and floor-bound tiles, a custom floor, exact tile maxima (448) and ties', () => {
    const rows = 200,
      cols = 260;
    const w = new Float32Array(rows * cols);
    // column 130's first 128 rows tiny: their amax is under the floor; column 3 holds the quotient ties
    for (let i = 0; i < 128; i++) w[i * cols + 130] = 1e-9 * (i - 64);
    const ties = [448, 1.0625, 1.1875, 0.0029296875, -0.0048828125, 240, 464, -464];
    for (let i = 0; i < ties.length; i++) w[(140 + i) * cols + 3] = ties[i]!;
    for (const [name, fast, js] of QUANTIZERS)
      for (const opts of [{}, { amaxFloor: 1e-12 }, { amaxFloor: 2 }]) {
        const got = fast(w, [rows, cols], opts);
        const want = js(w, [rows, cols], opts);
        expectSameBits(got.q, want.q, `${name} q ${JSON.stringify(opts)}`);
        expectSameBits(got.scales, want.scales, `${name} scales ${JSON.stringify(opts)}`);
      }
  });

  it.runIf(native)('a NaN or an infinity gets the JavaScript error naming its index', () => {
    for (const [name, fast] of QUANTIZERS)
      for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
        const w = matrix(150, 140, 9);
        w[131 * 140 + 7] = bad;
        expect(() => fast(w, [150, 140]), `${name} ${bad}`).toThrow(
          new RegExp(`${name}: non-finite input ${bad} at flat index ${131 * 140 + 7}`),
        );
      }
  });

  it.runIf(native)('the native function checks its arguments before it writes', () => {
    const w = new Float32Array(256 * 256);
    const q = new Uint8Array(256 * 256);
    const call =
      (...a: Parameters<typeof quantizeE4M3TilesNative>) =>
      () =>
        quantizeE4M3TilesNative(...a);
    expect(call(w, 256, 256, 128, 128, 1e-4, 'weight', new Uint8Array(100), new Float32Array(4))).toThrow(
      /shorter than rows x cols/,
    );
    expect(call(w, 256, 256, 128, 128, 1e-4, 'weight', q, new Float32Array(3))).toThrow(/shorter than rows x cols/);
    expect(call(w, 256, 256, 1, 128, 1e-4, 'activation', q, new Float32Array(511))).toThrow(/shorter than rows x cols/);
    expect(call(w, 256, 256, 0, 128, 1e-4, 'weight', q, new Float32Array(4))).toThrow(/tiles or floor not positive/);
    expect(call(w, 256, 256, 128, 128, 0, 'weight', q, new Float32Array(4))).toThrow(/tiles or floor not positive/);
    expect(call(w, 256, 256, 128, 128, 1e-4, 'gradient' as 'weight', q, new Float32Array(4))).toThrow(
      /scale rule must be 'weight' or 'activation'/,
    );
    expect(
      call(
        new Float64Array(4) as unknown as Float32Array,
        2,
        2,
        128,
        128,
        1e-4,
        'weight',
        new Uint8Array(4),
        new Float32Array(1),
      ),
    ).toThrow(/expected \(x: Float32Array/);
  });
});
