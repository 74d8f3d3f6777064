// gated-simd.ts's SwiGLU forward / backward and SiLU backward kernels equal the JavaScript loops they
// replaced (vector-exp's e^−x pass, then the f64 loop) bit for bit: ragged sizes around the 4-lane
// vectors and the module's 16,384-float trips, values of many magnitudes with ±0, ±∞, NaN and
// arguments past exp's range; the kernels as the CPU backend runs them (siluBackward) too.
import { describe, expect, it, vi } from 'vitest';
import { allocResident, freeResident } from '../src/cpu/gemm/index.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { CpuStorage } from '../src/cpu/backend.js';
import { siluBackwardF32, siluF32, swigluBackwardF32, swigluF32 } from '../src/cpu/gated-simd.js';
import { unaryKernelFast } from '../src/cpu/fast-paths.js';
import { siluBackwardKernel } from '../src/cpu/train-kernels.js';
import { expF32, vectorExpAvailable } from '../src/cpu/vector-exp.js';
import { cpu, Rng } from '../src/index.js';
import { expectSameBits } from '../src/testing.js';

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

describe.skipIf(!vectorExpAvailable())('gated SIMD kernels', () => {
  it('swiglu and its backward equal the JavaScript loops bitwise', () => {
    const rng = new Rng(7);
    for (const n of SIZES) {
      const [g, u, dh] = [values(rng, n), values(rng, n), values(rng, n)];
      const e = eNeg(g);
      const h = new Float32Array(n);
      expect(swigluF32(g, u, h)).toBe(true);
      expectSameBits(
        h,
        Float32Array.from(g, (x, i) => (x / (1 + e[i]!)) * u[i]!),
      );
      const [dg, du] = [new Float32Array(n), new Float32Array(n)];
      expect(swigluBackwardF32(dh, g, u, dg, du)).toBe(true);
      const s = Float64Array.from(e, (v) => 1 / (1 + v));
      expectSameBits(
        dg,
        Float32Array.from(g, (x, i) => dh[i]! * u[i]! * s[i]! * (1 + x * (1 - s[i]!))),
      );
      expectSameBits(
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
      expectSameBits(dx, want);
      const t = (d: Float32Array) => ({ storage: new CpuStorage(d), shape: [n], dtype: 'f32' as const });
      const [out] = siluBackwardKernel(cpu, [t(x), t(dy)]);
      expectSameBits((out!.storage as CpuStorage).data as Float32Array, want);
    }
  });

  it('silu forward is x / (1 + e) with the vector exp, directly and as the CPU kernel', () => {
    const rng = new Rng(9);
    for (const n of SIZES) {
      const x = values(rng, n);
      const e = eNeg(x);
      const want = Float32Array.from(x, (v, i) => v / (1 + e[i]!));
      const y = new Float32Array(n);
      expect(siluF32(x, y)).toBe(true);
      expectSameBits(y, want);
      const [out] = unaryKernelFast(cpu, [{ storage: new CpuStorage(x), shape: [n], dtype: 'f32' }], { op: 'silu' });
      expectSameBits((out!.storage as CpuStorage).data as Float32Array, want);
    }
  });

  it('silu forward is within 2^-22 + 2^-23 (relative) of float64 silu, -0 below x = -88.37626', () => {
    const rng = new Rng(10);
    const bound = 2 ** -22 + 2 ** -23;
    let worst = 0;
    for (const n of [5, 1001, 16385, 40003]) {
      // Magnitudes 1e-3 .. 1e3 (both tails of the sigmoid) and uniform values across exp's f32 range.
      const x = Float32Array.from({ length: n }, (_, i) =>
        i % 2 ? rng.normal() * 10 ** ((i % 7) - 3) : (rng.uniform() * 2 - 1) * 110,
      );
      const y = new Float32Array(n);
      expect(siluF32(x, y)).toBe(true);
      x.forEach((v, i) => {
        const ref = v / (1 + Math.exp(-v));
        if (-v > Math.fround(88.37626)) {
          // e^-x past the vector exp's range (+Infinity): -0 where |silu| is under 4e-37
          expect(Object.is(y[i], -0), `x = ${v}`).toBe(true);
          expect(Math.abs(ref)).toBeLessThan(4e-37);
          return;
        }
        const rel = Math.abs(y[i]! - ref) / Math.abs(ref);
        worst = Math.max(worst, rel);
        expect(rel, `x = ${v}: ${y[i]} vs ${ref}`).toBeLessThanOrEqual(bound);
      });
    }
    // The bound is not loose by orders of magnitude (the vector exp's error shows).
    expect(worst).toBeGreaterThan(2 ** -26);
  });

  it('resident operands run in place in the engine memory: the staged results bit for bit', () => {
    const rng = new Rng(11);
    const kept: Float32Array[] = [];
    const resident = (from: Float32Array) => {
      const a = allocResident('f32', from.length + 8) as Float32Array;
      kept.push(a);
      a.fill(7); // guards around the operand
      const v = a.subarray(4, 4 + from.length);
      v.set(from);
      return v;
    };
    const guarded = (v: Float32Array) => {
      const all = new Float32Array(v.buffer, v.byteOffset - 16, v.length + 8);
      return [...all.subarray(0, 4), ...all.subarray(v.length + 4)].every((x) => x === 7);
    };
    const worker = getEngine()!;
    for (const n of [3, 5, 64, 1001, 40003]) {
      const [g, u, dh] = [values(rng, n), values(rng, n), values(rng, n)];
      const h = new Float32Array(n);
      swigluF32(g, u, h);
      const [rg, ru] = [resident(g), resident(u)];
      const spy = vi.spyOn(worker, 'runRowKernels');
      expect(swigluF32(rg, ru, rg)).toBe(true); // in place, h = g
      expect(spy.mock.calls.length, 'the in-place kernels ran').toBe(n >= 4 ? 1 : 0);
      spy.mockRestore();
      expectSameBits(rg, h);
      expect(guarded(rg) && guarded(ru)).toBe(true);
      const [dg, du] = [new Float32Array(n), new Float32Array(n)];
      swigluBackwardF32(dh, g, u, dg, du);
      const [rdg, rdu] = [resident(new Float32Array(n)), resident(new Float32Array(n))];
      expect(swigluBackwardF32(resident(dh), resident(g), resident(u), rdg, rdu)).toBe(true);
      expectSameBits(rdg, dg);
      expectSameBits(rdu, du);
      expect(guarded(rdg) && guarded(rdu)).toBe(true);
      const y = new Float32Array(n);
      siluF32(g, y);
      const rx = resident(g);
      expect(siluF32(rx, rx)).toBe(true);
      expectSameBits(rx, y);
      // an output overlapping an input one float along (within one staging trip): staged, as host arrays are
      if (n >= 8 && n < 16384) {
        const both = resident(new Float32Array(n + 1));
        both.set(g);
        const want = new Float32Array(n);
        siluF32(both.subarray(0, n), want);
        siluF32(both.subarray(0, n), both.subarray(1, n + 1));
        expectSameBits(both.subarray(1, n + 1), want);
      }
    }
    for (const a of kept) freeResident(a);
  });

  it('rejects operands of unequal lengths', () => {
    expect(() => swigluF32(new Float32Array(4), new Float32Array(3), new Float32Array(4))).toThrow(/4 elements/);
  });
});
