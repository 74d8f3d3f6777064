// Test helpers: core's testing utilities with vitest assertions on top.
import { expect } from 'vitest';
import {
  finiteDifferenceCheck,
  randomTensor64,
  randomUniform,
  relativeError,
  type GradCheckOptions,
} from '../src/testing.js';
import type { Tensor } from '../src/index.js';

export { randomUniform as randArray, randomTensor64 as rand64, relativeError as relErr };

/** Asserts every checked input's gradient is within `tol` (default 1e-6) of central differences. */
export function gradcheck(
  name: string,
  f: (...xs: Tensor[]) => Tensor,
  inputs: Tensor[],
  opts: GradCheckOptions & { tol?: number } = {},
): void {
  finiteDifferenceCheck(f, inputs, opts).forEach((err, i) => {
    if (err === undefined) return;
    expect(err, `${name}: gradient of input ${i} differs from finite differences (rel ${err})`).toBeLessThan(
      opts.tol ?? 1e-6,
    );
  });
}

/** y = x wᵀ in float64 for x [m, k] and w [n, k] (a Linear weight): the products GEMV / GEMM tests check. */
export function linearReference64(
  m: number,
  n: number,
  k: number,
  x: ArrayLike<number>,
  w: ArrayLike<number>,
): Float64Array {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += x[i * k + p]! * w[j * k + p]!;
      y[i * n + j] = s;
    }
  return y;
}
