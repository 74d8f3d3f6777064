// The AdamW update of f32 weights (f32 or bf16 moments) in f64x2 SIMD lanes equals the scalar loop bit
// for bit: the same f64 operations in the same order, rounded to f32 once per stored value.
import { describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { expectSameBits } from '../src/testing.js';
import { adamwPairs } from '../src/cpu/adamw-simd.js';
import type { AdamWKernelAttrs } from '../src/optim/adamw.js';
import { adamwReference, attrsAt, randomF32 } from './adamw-reference.js';

describe('AdamW f32 update in SIMD lanes', () => {
  // ragged: odd lengths, one element, lengths around the 4,096-float chunk
  for (const n of [1, 2, 7, 4095, 4096, 4097, 8193, 10_001]) {
    it(`equals the scalar loop bitwise over 4 steps (${n} elements)`, () => {
      const rng = new T.Rng(n);
      const w = randomF32(n, rng, 0.5);
      const m = randomF32(n, rng, 1e-3);
      const v = randomF32(n, rng, 1e-3, true);
      const [w2, m2, v2] = [w.slice(), m.slice(), v.slice()];
      for (let step = 1; step <= 4; step++) {
        // gradients spanning magnitudes (tiny ones make v / c2 + eps matter), a zero, decay on and off
        const g = randomF32(n, rng, 10 ** -(step % 4));
        g[0] = 0;
        const a = attrsAt(step, false);
        adamwReference(w, g, m, v, a);
        const done = adamwPairs(w2, g, m2, v2, n, a, 1);
        expect(done).toBe(n - (n % 2)); // Node has SIMD128: the lanes ran
        // the odd last element is the caller's (the kernel's scalar loop)
        adamwReference(w2.subarray(done), g.subarray(done), m2.subarray(done), v2.subarray(done), a);
        for (const [got, want, name] of [
          [w2, w, 'w'],
          [m2, m, 'm'],
          [v2, v, 'v'],
        ] as const) {
          const at = got.findIndex((x, i) => !Object.is(x, want[i]));
          expect(at, `${name}, step ${step}: first differing element`).toBe(-1);
        }
      }
    });
  }

  it('is what AdamW runs on f32 parameters (the fused kernel, bitwise the scalar loop)', () => {
    const n = 6001;
    const rng = new T.Rng(3);
    const w0 = randomF32(n, rng, 0.5);
    const p = new T.Parameter(T.tensor(w0, { shape: [n] }));
    const opt = new T.AdamW([p], { lr: 1e-2, betas: [0.9, 0.95], weightDecay: 0.1 });
    const [w, m, v] = [w0.slice(), new Float32Array(n), new Float32Array(n)];
    for (let step = 1; step <= 3; step++) {
      const g = randomF32(n, rng, 0.1);
      p.grad = T.tensor(g, { shape: [n] });
      opt.stepUpdate();
      const a: AdamWKernelAttrs = {
        b1: 0.9,
        b2: 0.95,
        c1: 1 - 0.9 ** step,
        c2: 1 - 0.95 ** step,
        eps: opt.eps,
        lr: 1e-2,
        decay: 1 - 1e-2 * 0.1,
        stateDType: 'f32',
      };
      adamwReference(w, g, m, v, a);
      expectSameBits(p.value.dataSync(), w, 'p.value.dataSync()');
    }
  });

  it('bf16 moments: AdamW on f32 parameters (SIMD lanes, bf16 staged through f32) equals the scalar bf16 loop bitwise', () => {
    // the scalar loop with bf16 moments: decoded to f32, the update in f64, the moments stored to f32
    // and rounded to bf16 from there; the weight from the unrounded moments
    const scalarBf16 = (
      w: Float32Array,
      g: Float32Array,
      mb: Uint16Array<ArrayBuffer>,
      vb: Uint16Array<ArrayBuffer>,
      a: AdamWKernelAttrs,
    ) => {
      const m = T.decodeBf16(mb);
      const v = T.decodeBf16(vb);
      adamwReference(w, g, m, v, a);
      T.encodeBf16(m, mb);
      T.encodeBf16(v, vb);
    };
    // ragged: odd lengths (the last element in the scalar loop), around the 4,096-float chunk
    for (const n of [1, 3, 4095, 4097, 10_001]) {
      const rng = new T.Rng(100 + n);
      const w0 = randomF32(n, rng, 0.5);
      const p = new T.Parameter(T.tensor(w0, { shape: [n] }));
      const opt = new T.AdamW([p], { lr: 1e-2, betas: [0.9, 0.95], weightDecay: 0.1, stateDType: 'bf16' });
      const [w, m, v] = [w0.slice(), new Uint16Array(n), new Uint16Array(n)];
      for (let step = 1; step <= 4; step++) {
        const g = randomF32(n, rng, 10 ** -(step % 4));
        p.grad = T.tensor(g, { shape: [n] });
        opt.stepUpdate();
        const a: AdamWKernelAttrs = {
          b1: 0.9,
          b2: 0.95,
          c1: 1 - 0.9 ** step,
          c2: 1 - 0.95 ** step,
          eps: opt.eps,
          lr: 1e-2,
          decay: 1 - 1e-2 * 0.1,
          stateDType: 'bf16',
        };
        scalarBf16(w, g, m, v, a);
        const got = opt.moments(p)!;
        expectSameBits(p.value.dataSync(), w, `w, n ${n}, step ${step}`);
        expectSameBits(got.m.rawSync(), m, `m, n ${n}, step ${step}`);
        expectSameBits(got.v.rawSync(), v, `v, n ${n}, step ${step}`);
      }
    }
  });

  it('bf16 moments of every bit pattern (zeros, subnormals, infinities, NaNs): the lanes equal the scalar loop', () => {
    const n = 65_536;
    const rng = new T.Rng(7);
    const m = Uint16Array.from({ length: n }, (_, i) => i);
    const v = Uint16Array.from({ length: n }, (_, i) => (i * 40_503) & 0xffff); // every pattern, shuffled
    const w = randomF32(n, rng, 0.5);
    const g = randomF32(n, rng, 0.1);
    const a: AdamWKernelAttrs = {
      b1: 0.9,
      b2: 0.95,
      c1: 0.19,
      c2: 0.0975,
      eps: 1e-8,
      lr: 1e-3,
      decay: 1 - 1e-4,
      stateDType: 'bf16',
    };
    const [w2, m2, v2] = [w.slice(), m.slice(), v.slice()];
    const [mf, vf] = [T.decodeBf16(m), T.decodeBf16(v)];
    adamwReference(w, g, mf, vf, a);
    T.encodeBf16(mf, m);
    T.encodeBf16(vf, v);
    expect(adamwPairs(w2, g, m2, v2, n, a, 1)).toBe(n);
    // bit for bit, NaNs included (the same rounding of the same f64 NaN, then encodeBf16's quieting)
    const u32 = (x: Float32Array) => new Uint32Array(x.buffer, x.byteOffset, x.length);
    const firstDiff = (got: ArrayLike<number>, want: ArrayLike<number>) =>
      Array.from(got).findIndex((x, i) => x !== want[i]);
    expect(firstDiff(u32(w2), u32(w)), 'w').toBe(-1);
    expect(firstDiff(m2, m), 'm').toBe(-1);
    expect(firstDiff(v2, v), 'v').toBe(-1);
    const bf16NaN = (b: number) => (b & 0x7f80) === 0x7f80 && (b & 0x7f) !== 0;
    expect(m.some(bf16NaN) && w.some(Number.isNaN)).toBe(true); // the NaN cases did occur
  });
});
