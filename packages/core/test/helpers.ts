// Test helpers: seeded random tensors and a float64 central-difference gradient checker.
import { expect } from 'vitest';
import { mul, noGrad, Rng, sum, tensor, type Tensor } from '../src/index.js';

export function randArray(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  const rng = new Rng(seed);
  const a = new Float64Array(n);
  // Keep values away from zero so nothing is accidentally all-zero or on a kink.
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * rng.uniform();
  return a;
}

export function rand64(shape: number[], seed: number, lo = -1, hi = 1): Tensor {
  return tensor(randArray(shape.reduce((a, b) => a * b, 1), seed, lo, hi), { shape, dtype: 'f64' });
}

export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

/**
 * Checks the analytic gradients of sum(f(inputs) * W) (W random) against central differences in
 * float64 for every input element (up to `maxElems` per input, evenly spread).
 */
export function gradcheck(name: string, f: (...xs: Tensor[]) => Tensor, inputs: Tensor[], opts: { h?: number; tol?: number; maxElems?: number; wrt?: number[] } = {}): void {
  const h = opts.h ?? 1e-6;
  const tol = opts.tol ?? 1e-6;
  const wrt = opts.wrt ?? inputs.map((_, i) => i);
  const leaves = inputs.map((t, i) => (wrt.includes(i) ? t.detach().requireGrad() : t));
  const out = f(...leaves);
  const w = tensor(randArray(out.size, 4242, 0.5, 1.5), { shape: [...out.shape], dtype: out.dtype });
  sum(mul(out, w)).backward();
  const lossAt = (xs: Tensor[]): number => noGrad(() => sum(mul(f(...xs), w)).dataSync()[0]!);
  for (const i of wrt) {
    const base = inputs[i]!.dataSync() as Float64Array;
    const analytic = leaves[i]!.grad?.dataSync();
    expect(analytic, `${name}: no gradient reached input ${i}`).toBeDefined();
    const n = base.length;
    const step = Math.max(1, Math.floor(n / (opts.maxElems ?? 64)));
    const num: number[] = [];
    const ana: number[] = [];
    for (let e = 0; e < n; e += step) {
      const eval1 = (delta: number): number => {
        const p = Float64Array.from(base);
        p[e]! += delta;
        const xs = inputs.map((t, k) => (k === i ? tensor(p, { shape: [...t.shape], dtype: 'f64' }) : t));
        return lossAt(xs);
      };
      num.push((eval1(h) - eval1(-h)) / (2 * h));
      ana.push(analytic![e]!);
    }
    const err = relErr(ana, num);
    expect(err, `${name}: gradient of input ${i} differs from finite differences (rel ${err})`).toBeLessThan(tol);
  }
}
