// f32 add / sub / mul / div in SIMD lanes equal the JavaScript loops they replace bit for bit (each
// result rounded once from the exact value), directly and through the binary kernel, addInPlace and
// scaleInPlace. NaN results are compared as NaN (their payload bits are not specified).
import { describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { expectSameBits } from '../src/testing.js';
import { ARITH_SIMD_MIN, arithF32, type ArithOp } from '../src/cpu/arith-simd.js';
import { addInto, mulInto, scaleInto } from '../src/cpu/train-kernels.js';
import { allocResident, freeResident, isResident, setGemmThreads } from '../src/cpu/gemm/index.js';

/** The loops the kernels ran before (fast-paths' arithRow, train-kernels' addF32 / scaleF32). */
function loop(op: ArithOp, a: Float32Array, as: number, b: Float32Array, bs: number, n: number): Float32Array {
  const o = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const x = a[i * as]!;
    const y = b[i * bs]!;
    o[i] = op === 'add' ? x + y : op === 'sub' ? x - y : op === 'mul' ? x * y : x / y;
  }
  return o;
}

/** Normal values of mixed magnitudes, with zeros of both signs, infinities, NaN, subnormals and f32's extremes. */
function values(n: number, rng: T.Rng): Float32Array {
  const a = new Float32Array(n);
  const special = [0, -0, Infinity, -Infinity, Number.NaN, 1e-45, -3e-39, 3.4028234e38, 1.1754944e-38];
  for (let i = 0; i < n; i++) a[i] = rng.normal() * 10 ** Math.floor(rng.uniform() * 12 - 6);
  for (let i = 0; i < Math.min(n, 40); i++) a[Math.floor(rng.uniform() * n)] = special[i % special.length]!;
  return a;
}

const OPS: ArithOp[] = ['add', 'sub', 'mul', 'div'];
// ragged: around the SIMD threshold, the 4-lane vectors and the 4,096-float chunk; a step's 131,072
const SIZES = [ARITH_SIMD_MIN, ARITH_SIMD_MIN + 3, 1001, 4095, 4096, 4097, 8193, 131_072];

describe('f32 arithmetic in SIMD lanes', () => {
  for (const op of OPS) {
    it(`${op}: vector op vector, vector op scalar, scalar op vector equal the loop bitwise`, () => {
      const rng = new T.Rng(OPS.indexOf(op) + 1);
      for (const n of SIZES) {
        const a = values(n + 5, rng);
        const b = values(n + 7, rng);
        const o = new Float32Array(n + 9).fill(7);
        // offsets into all three: the kernel reads and writes only its span
        expect(arithF32(op, a, 5, 1, b, 7, 1, o, 9, n)).toBe(true);
        expectSameBits(o.subarray(9), loop(op, a.subarray(5), 1, b.subarray(7), 1, n), `${op} vv n=${n}`);
        expect([...o.subarray(0, 9)]).toEqual(Array(9).fill(7));
        for (const s of [b[7]!, 0, -0, 3, Infinity, Number.NaN, 1e-45]) {
          const sb = Float32Array.of(9, s);
          expect(arithF32(op, a, 5, 1, sb, 1, 0, o, 9, n)).toBe(true);
          expectSameBits(o.subarray(9), loop(op, a.subarray(5), 1, sb.subarray(1), 0, n), `${op} vs ${s} n=${n}`);
          expect(arithF32(op, sb, 1, 0, b, 7, 1, o, 9, n)).toBe(true);
          expectSameBits(o.subarray(9), loop(op, sb.subarray(1), 0, b.subarray(7), 1, n), `${op} sv ${s} n=${n}`);
        }
      }
    });
  }

  it('writes in place over either operand', () => {
    const rng = new T.Rng(9);
    const n = 10_007;
    const a = values(n, rng);
    const b = values(n, rng);
    const want = loop('sub', a, 1, b, 1, n);
    const a2 = a.slice();
    expect(arithF32('sub', a2, 0, 1, b, 0, 1, a2, 0, n)).toBe(true);
    expectSameBits(a2, want, 'o = a');
    const b2 = b.slice();
    expect(arithF32('sub', a, 0, 1, b2, 0, 1, b2, 0, n)).toBe(true);
    expectSameBits(b2, want, 'o = b');
  });

  it('declines what it does not run: short spans, other strides, two scalars', () => {
    const a = new Float32Array(4096);
    expect(arithF32('add', a, 0, 1, a, 0, 1, a, 0, ARITH_SIMD_MIN - 1)).toBe(false);
    expect(arithF32('add', a, 0, 2, a, 0, 1, a, 0, 1000)).toBe(false);
    expect(arithF32('add', a, 0, 0, a, 0, 0, a, 0, 1000)).toBe(false);
  });

  it('the binary kernel (same shapes, a scalar either side, rows of a trailing operand) equals the loop', () => {
    const rng = new T.Rng(3);
    for (const [shape, other] of [
      [
        [8, 128, 128],
        [8, 128, 128],
      ],
      [
        [3, 7, 333],
        [3, 7, 333],
      ],
      [[1024, 257], []],
      [[5, 300], [300]],
      [
        [2, 300],
        [2, 1],
      ],
    ] as [number[], number[]][]) {
      for (const op of OPS) {
        const n = shape.reduce((p, d) => p * d, 1);
        const m = other.reduce((p, d) => p * d, 1);
        const av = values(n, rng);
        const bv = values(m, rng);
        const x = T.tensor(av, { shape, dtype: 'f32' });
        const y = T.tensor(bv, { shape: other, dtype: 'f32' });
        const fwd = { add: T.add, sub: T.sub, mul: T.mul, div: T.div }[op];
        const want = new Float32Array(n);
        const inner = shape[shape.length - 1]!;
        for (let i = 0; i < n; i++) {
          // b's element for output i: same shape, scalar, trailing row, or one per row
          const j = m === n ? i : m === 1 ? 0 : other.length === 1 ? i % m : Math.floor(i / inner);
          want.set(loop(op, av.subarray(i), 0, bv.subarray(j), 0, 1), i);
        }
        expectSameBits(fwd(x, y).dataSync() as Float32Array, want, `${op} [${shape}] by [${other}]`);
        // and the operands the other way round
        const back = new Float32Array(n);
        for (let i = 0; i < n; i++) {
          const j = m === n ? i : m === 1 ? 0 : other.length === 1 ? i % m : Math.floor(i / inner);
          back.set(loop(op, bv.subarray(j), 0, av.subarray(i), 0, 1), i);
        }
        expectSameBits(fwd(y, x).dataSync() as Float32Array, back, `${op} [${other}] by [${shape}]`);
      }
    }
  });

  it('addInto and scaleInto (addInPlace, scaleInPlace) equal their loops', () => {
    const rng = new T.Rng(4);
    for (const n of [5, 4097, 131_072]) {
      const d = values(n, rng);
      const s = values(n, rng);
      const want = loop('add', d, 1, s, 1, n);
      addInto(d, s);
      expectSameBits(d, want, `addInto n=${n}`);
      for (const k of [0.37, 1e-30, 3]) {
        const x = values(n, rng);
        const scaled = loop('mul', x, 1, Float32Array.of(Math.fround(k)), 0, n);
        scaleInto(x, k);
        expectSameBits(x, scaled, `scaleInto ${k} n=${n}`);
      }
    }
  });

  it("mulInto equals the loop's products, on host arrays and in the engine's memory at 1 and 2 threads", () => {
    const rng = new T.Rng(5);
    for (const threads of [1, 2]) {
      setGemmThreads(threads);
      for (const n of [3, 255, 257, 4099, 300_001]) {
        const d = values(n, rng);
        const s = values(n, rng);
        const want = loop('mul', d, 1, s, 1, n);
        const host = d.slice();
        mulInto(host, s);
        expectSameBits(host, want, `mulInto host n=${n}`);
        const rd = allocResident('f32', n) as Float32Array;
        const rs = allocResident('f32', n) as Float32Array;
        expect(isResident(rd) && isResident(rs)).toBe(true);
        rd.set(d);
        rs.set(s);
        mulInto(rd, rs);
        expectSameBits(rd, want, `mulInto resident n=${n} threads=${threads}`);
        freeResident(rd);
        freeResident(rs);
      }
    }
    expect(() => mulInto(new Float32Array(4), new Float32Array(5))).toThrow(/lengths 4 and 5 differ/);
  });
});
