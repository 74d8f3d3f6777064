// matmul's backward with both operands requiring gradients runs one 'matmulGrads' kernel (on the CPU,
// both products as one GEMM job). Its gradients must be bitwise the two products the composed backward
// runs through the 'matmul' kernel: every transpose combination, ragged shapes (rows and columns that
// are not whole tiles, a GEMV-sized dimension, k past one depth block), 1 and 2 threads, f32; f64
// takes the composed products (and is checked against finite differences).
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { expectSameBits } from '../src/testing.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { gradcheck, rand64 } from './helpers.js';

const saved = { ...gemmConfig };
afterAll(() => Object.assign(gemmConfig, saved));
const bits = (t: T.Tensor): Uint32Array => new Uint32Array(new Float32Array(t.rawSync() as Float32Array).buffer);

/** [M, K]-by-[K, N] stored as the transposes say: A [M, K] or [K, M], B [K, N] or [N, K]. */
function operands(
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
  seed: number,
  dtype: 'f32' | 'f64',
) {
  const a = T.cast(rand64(transA ? [K, M] : [M, K], seed), dtype).requireGrad();
  const b = T.cast(rand64(transB ? [N, K] : [K, N], seed + 1), dtype).requireGrad();
  const g = T.cast(rand64([M, N], seed + 2), dtype);
  return { a, b, g };
}

const shapes: [number, number, number][] = [
  [1024, 128, 64],
  [64, 320, 128],
  [37, 29, 300],
  [3, 50, 40],
  [130, 2, 7],
];

describe('matmulGrads', () => {
  for (const threads of [1, 2]) {
    for (const [M, N, K] of shapes) {
      it(`${threads} thread(s), [${M}, ${K}]·[${K}, ${N}]: both gradients bitwise the composed products`, () => {
        T.setGemmThreads(threads);
        for (const transA of [false, true])
          for (const transB of [false, true]) {
            const { a, b, g } = operands(M, N, K, transA, transB, M + N + K, 'f32');
            T.startOpProfile();
            T.matmul(a, b, { transA, transB }).backward(g);
            const ops = new Map(T.stopOpProfile());
            expect(ops.get('matmulGrads')?.calls).toBe(1);
            // The composed backward's products (linalg.ts): d op(A) = g op(B)ᵀ, d op(B) = op(A)ᵀ g.
            const [ga, gb] = T.noGrad(() => [
              !transA ? T.matmul(g, b, { transB: !transB }) : T.matmul(b, g, { transA: transB, transB: true }),
              !transB ? T.matmul(a, g, { transA: !transA }) : T.matmul(g, a, { transA: true, transB: transA }),
            ]);
            expectSameBits(bits(a.grad!), bits(ga!), 'a.grad bits');
            expectSameBits(bits(b.grad!), bits(gb!), 'b.grad bits');
          }
      });
    }
  }

  it('only one operand requiring a gradient takes the one product it needs', () => {
    const { a, b, g } = operands(64, 48, 32, false, true, 5, 'f32');
    b.requireGrad(false);
    T.startOpProfile();
    T.matmul(a, b, { transB: true }).backward(g);
    const ops = new Map(T.stopOpProfile());
    expect(ops.has('matmulGrads')).toBe(false);
    expect(a.grad!.shape).toEqual([64, 32]);
  });

  it('f64: finite differences, every transpose', () => {
    for (const transA of [false, true])
      for (const transB of [false, true]) {
        const { a, b, g } = operands(6, 5, 7, transA, transB, 11, 'f64');
        gradcheck(`matmul ${transA} ${transB}`, (x, y) => T.sum(T.mul(T.matmul(x!, y!, { transA, transB }), g)), [
          a,
          b,
        ]);
      }
  });
});
