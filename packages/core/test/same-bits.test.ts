import { describe, expect, it } from 'vitest';
import { bitMismatches, expectSameBits } from '../src/testing.js';

/** The message expectSameBits throws for got / want, or '' when it passes. */
function report(got: ArrayLike<number>, want: ArrayLike<number>, opts = {}): string {
  try {
    expectSameBits(got, want, 'y', opts);
    return '';
  } catch (e) {
    return (e as Error).message;
  }
}

describe('expectSameBits', () => {
  it('passes on equal arrays of any number type, and on a typed array against its values', () => {
    const v = [1.5, -0, Infinity, Number.NaN, 3];
    expect(report(Float32Array.from(v), Float32Array.from(v))).toBe('');
    expect(report(Float64Array.from(v), v)).toBe('');
    expect(report(Int32Array.of(1, -2), Int32Array.of(1, -2))).toBe('');
    expect(report(Uint16Array.of(0x3f80), Uint16Array.of(0x3f80))).toBe('');
  });

  it('tells +0 from -0 and compares NaN as toEqual does unless asked for payloads', () => {
    expect(report(Float32Array.of(0), Float32Array.of(-0))).toMatch(/1 of 1 elements differ/);
    const a = Float32Array.of(Number.NaN);
    const b = new Float32Array(new Uint32Array([0x7fc00001]).buffer); // a NaN with another payload
    expect(Number.isNaN(b[0])).toBe(true);
    expect(report(a, b)).toBe('');
    expect(report(a, b, { nan: 'bits' })).toBe(
      'y: 1 of 1 elements differ: [0] got NaN (0x7fc00000), want NaN (0x7fc00001)',
    );
    expect(report(b, new Float32Array(b), { nan: 'bits' })).toBe('');
    expect(() => expectSameBits(Float32Array.of(1), [1], 'y', { nan: 'bits' })).toThrow(TypeError);
  });

  it('reports the length, the count and the first differing elements with their bits', () => {
    const want = Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8);
    const got = want.map((v, i) => (i % 2 ? v + 1 : v));
    expect(report(got, want, { shown: 2 })).toBe(
      'y: 4 of 8 elements differ: [1] got 3 (0x40400000), want 2 (0x40000000); [3] got 5 (0x40a00000), want 4 (0x40800000); …',
    );
    expect(report(Float64Array.of(0.5), Float64Array.of(0.25))).toBe(
      'y: 1 of 1 elements differ: [0] got 0.5 (0x3fe0000000000000), want 0.25 (0x3fd0000000000000)',
    );
    expect(report([1, 2], [1, 3])).toBe('y: 1 of 2 elements differ: [1] got 2, want 3');
    expect(report(new Float32Array(3), new Float32Array(4))).toBe('y: lengths differ (got 3, want 4)');
    expect(bitMismatches(Int8Array.of(1, 2, 3), Int8Array.of(0, 2, 4))).toEqual([0, 2]);
  });

  it('fails at once, with a short message, on 150k-element arrays that differ everywhere', () => {
    const want = Float32Array.from({ length: 150_000 }, (_, i) => Math.sin(i));
    const got = want.map((v) => v + 1);
    const t0 = performance.now();
    const message = report(got, want);
    expect(message).toMatch(/^y: 150000 of 150000 elements differ: \[0\] got 1 \(0x3f800000\), want 0 \(0x00000000\);/);
    expect(message.length).toBeLessThan(400);
    expect(performance.now() - t0).toBeLessThan(5_000); // toEqual's diff takes minutes here
  });
});
