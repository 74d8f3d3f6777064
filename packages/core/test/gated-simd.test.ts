// gated-simd.ts's SwiGLU forward / backward and SiLU backward kernels equal the JavaScript loops they
// replaced (vector-exp's e^−x pass, then the f64 loop) bit for bit: ragged sizes around the 4-lane
// vectors and the module's 16,384-float trips, values of many magnitudes with ±0, ±∞, NaN and
// arguments past exp's range; the kernels as the CPU backend runs them (siluBackward) too.
import { describe, expect, it } from 'vitest';
import { CpuStorage } from '../src/cpu/backend.js';
import { siluBackwardF32, swigluBackwardF32, swigluF32 } from '../src/cpu/gated-simd.js';
import { siluBackwardKernel } from '../src/cpu/train-kernels.js';
import { expF32, vectorExpAvailable } from '../src/cpu/vector-exp.js';
import { cpu, Rng } from '../src/index.js';

const SIZES = [1, 3, 4, 5, 7, 64, 1001, 16383, 16384, 16385, 40003];
const SPECIAL = [0, -0, Infinity, -Infinity, NaN, 88.5, -88.5, 104, -104, 1e-40, -1e-40, 3.4e38, -3.4e38];

function values(rng: Rng, n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) =>
    i % 13 === 5 ? SPECIAL[(i >> 4) % SPECIAL.length]! : rng.normal() * 10 ** ((i % 7) - 3),
  );
}
const eNeg = (x: Float32Array) => {
  const e = new Float32Array(x.length);
  expF32(x, 0, e, 0, x.length, -1);
  return e;
};
function same(a: Float32Array, b: Float32Array): void {
  const at = a.findIndex((v, i) => !Object.is(v, b[i]));
  expect(at, at >= 0 ? `element ${at}: ${a[at]} vs ${b[at]}` : '').toBe(-1);
}

describe.skipIf(!vectorExpAvailable())('gated SIMD kernels', () => {
  it('swiglu and its backward equal the JavaScript loops bitwise', () => {
    const rng = new Rng(7);
    for (const n of SIZES) {
      const [g, u, dh] = [values(rng, n), values(rng, n), values(rng, n)];
      const e = eNeg(g);
      const h = new Float32Array(n);
      expect(swigluF32(g, u, h)).toBe(true);
      same(
        h,
        Float32Array.from(g, (x, i) => (x / (1 + e[i]!)) * u[i]!),
      );
      const [dg, du] = [new Float32Array(n), new Float32Array(n)];
      expect(swigluBackwardF32(dh, g, u, dg, du)).toBe(true);
      const s = Float64Array.from(e, (v) => 1 / (1 + v));
      same(
        dg,
        Float32Array.from(g, (x, i) => dh[i]! * u[i]! * s[i]! * (1 + x * (1 - s[i]!))),
      );
      same(
        du,
        Float32Array.from(g, (x, i) => dh[i]! * x * s[i]!),
      );
    }
  });

  it('silu backward equals the JavaScript loop bitwise, directly and as the CPU kernel', () => {
    const rng = new Rng(8);
    for (const n of SIZES) {
      const [x, dy] = [values(rng, n), values(rng, n)];
      const e = eNeg(x);
      const want = Float32Array.from(x, (v, i) => {
        const s = 1 / (1 + e[i]!);
        return dy[i]! * s * (1 + v * (1 - s));
      });
      const dx = new Float32Array(n);
      expect(siluBackwardF32(x, dy, dx)).toBe(true);
      same(dx, want);
      const t = (d: Float32Array) => ({ storage: new CpuStorage(d), shape: [n], dtype: 'f32' as const });
      const [out] = siluBackwardKernel(cpu, [t(x), t(dy)]);
      same((out!.storage as CpuStorage).data as Float32Array, want);
    }
  });

  it('rejects operands of unequal lengths', () => {
    expect(() => swigluF32(new Float32Array(4), new Float32Array(3), new Float32Array(4))).toThrow(/4 elements/);
  });
});
