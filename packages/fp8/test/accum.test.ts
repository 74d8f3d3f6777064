import { relativeError } from '@dsv3/core/testing';
import { describe, expect, it } from 'vitest';
import { LimitedAccumulator, accumulationStudy, fp8GemmBlockScaled } from '../src/index';
import { f32, u8 } from './goldens';

describe('limited-precision accumulation (report §3.3.2)', () => {
  it('K=4096 without promotion: error in the percent range; promotion every 128 is orders of magnitude better', () => {
    const never = accumulationStudy({ m: 16, n: 16, k: 4096, accumulator: { mantissaBits: 14 } });
    const promoted = accumulationStudy({ m: 16, n: 16, k: 4096, accumulator: { mantissaBits: 14, promoteEvery: 128 } });
    expect(never.maxRelError).toBeGreaterThan(0.01);
    expect(never.maxRelError).toBeLessThan(0.1);
    expect(promoted.maxRelError).toBeLessThan(never.maxRelError / 100);
    expect(promoted.maxRelError).toBeLessThan(1e-3);
  });

  it('error grows with K without promotion and stays flat with it', () => {
    const e = (k: number, promoteEvery?: number) =>
      accumulationStudy({ m: 8, n: 8, k, accumulator: { promoteEvery } }).meanRelError;
    expect(e(2048)).toBeGreaterThan(1.5 * e(512));
    expect(e(2048, 128)).toBeLessThan(2 * e(512, 128));
  });

  it('with enough mantissa bits the emulation is exact-ish', () => {
    const r = accumulationStudy({ m: 8, n: 8, k: 1024, accumulator: { mantissaBits: 40 } });
    expect(r.maxRelError).toBeLessThan(1e-7);
  });

  it('runs on the golden GEMM operands and matches the exact product when promoting', () => {
    const key = 'k.gemm.64x384x512';
    const c = fp8GemmBlockScaled(u8(`${key}.a`), f32(`${key}.as`), u8(`${key}.b`), f32(`${key}.bs`), 64, 384, 512, {
      accumulator: { promoteEvery: 128 },
    });
    expect(relativeError(c, f32(`${key}.exact`))).toBeLessThan(1e-3);
  });

  it('LimitedAccumulator truncates to the exponent of the largest addend', () => {
    const acc = new LimitedAccumulator(4);
    acc.add(new Float64Array([1]), 0, 1);
    expect(acc.sum).toBe(1);
    // 1 + 2^-5: 2^-5 is below 2^(0-4) = 1/16 resolution → dropped
    acc.add(new Float64Array([2 ** -5]), 0, 1);
    expect(acc.sum).toBe(1);
    acc.add(new Float64Array([2 ** -4 + 2 ** -6]), 0, 1);
    expect(acc.sum).toBe(1 + 2 ** -4);
    const near = new LimitedAccumulator(4, 'nearest');
    near.sum = 1;
    near.add(new Float64Array([3 * 2 ** -6]), 0, 1); // 0.75 ulp → rounds to 1 ulp
    expect(near.sum).toBe(1 + 2 ** -4);
  });

  it('rejects bad options', () => {
    const key = 'k.gemm.64x384x512';
    const args = [u8(`${key}.a`), f32(`${key}.as`), u8(`${key}.b`), f32(`${key}.bs`), 64, 384, 512] as const;
    expect(() => fp8GemmBlockScaled(...args, { accumulator: { promoteEvery: 100 } })).toThrow(/promoteEvery/);
    expect(() => fp8GemmBlockScaled(...args, { accumulator: { groupSize: 0 } })).toThrow(/groupSize/);
    expect(() => fp8GemmBlockScaled(...args, { accumulator: { mantissaBits: 0 } })).toThrow(/mantissaBits/);
  });
});
