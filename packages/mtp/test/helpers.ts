// Test helpers of @dsv3/mtp: seeded random data, relative error, a float64 central-difference gradient
// check over module parameters, and a chi-square goodness-of-fit p-value.
import { expect } from 'vitest';
import { Rng, tensor, type Module, type Parameter, type Tensor } from '@dsv3/core';
import {
  parameterGradientCheck,
  randomTensor64 as rand64,
  randomUniform as randArray,
  relativeError as relErr,
} from '@dsv3/core/testing';

export { rand64, randArray, relErr };

export function randTokens(b: number, s: number, vocab: number, seed: number): Tensor {
  const rng = new Rng(seed);
  return tensor(
    Int32Array.from({ length: b * s }, () => rng.integer(0, vocab)),
    { shape: [b, s], dtype: 'i32' },
  );
}

/** Gives every parameter of a module random values (norm weights around 1, others around 0). */
export function randomize(m: Module, seed: number): void {
  const rng = new Rng(seed);
  for (const [name, p] of m.namedParameters()) {
    const norm = /norm\.weight$/.test(name);
    const v = new Float64Array(p.value.size);
    for (let i = 0; i < v.length; i++) v[i] = norm ? 0.5 + rng.uniform() : (rng.uniform() * 2 - 1) * 0.6;
    p.assign(tensor(v, { shape: [...p.value.shape], dtype: p.value.dtype }));
  }
}

/**
 * Checks the gradients that backward() leaves on `params` (and on `inputs`, leaf tensors that require
 * grad) against float64 central differences of `loss`, up to `maxElems` elements per tensor.
 */
export function gradcheckParams(
  name: string,
  loss: () => Tensor,
  params: [string, Parameter][],
  opts: { h?: number; tol?: number; maxElems?: number } = {},
): void {
  for (const r of parameterGradientCheck(loss, params, { h: opts.h, maxElems: opts.maxElems })) {
    expect(r.error, `${name}: gradient of ${r.name} differs from finite differences (rel ${r.error})`).toBeLessThan(
      opts.tol ?? 1e-6,
    );
  }
}

// ---- chi-square ----

const LANCZOS = [
  0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
  12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
];

export function lnGamma(z: number): number {
  if (z < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * z)) - lnGamma(1 - z);
  const zz = z - 1;
  let x = LANCZOS[0]!;
  for (let i = 1; i < LANCZOS.length; i++) x += LANCZOS[i]! / (zz + i);
  const t = zz + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (zz + 0.5) * Math.log(t) - t + Math.log(x);
}

/** Upper regularized incomplete gamma Q(a, x) = Γ(a, x) / Γ(a). */
export function gammaQ(a: number, x: number): number {
  if (!(a > 0) || x < 0) throw new RangeError(`gammaQ(${a}, ${x})`);
  if (x === 0) return 1;
  const front = Math.exp(-x + a * Math.log(x) - lnGamma(a));
  if (x < a + 1) {
    // Series for P(a, x).
    let term = 1 / a;
    let sum = term;
    for (let n = 1; n < 10000; n++) {
      term *= x / (a + n);
      sum += term;
      if (Math.abs(term) < Math.abs(sum) * 1e-16) break;
    }
    return 1 - sum * front;
  }
  // Continued fraction for Q(a, x) (modified Lentz).
  const tiny = 1e-300;
  let b = x + 1 - a;
  let c = 1 / tiny;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 10000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < tiny) d = tiny;
    c = b + an / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < 1e-16) break;
  }
  return front * h;
}

/** P(χ²_df ≥ x). */
export function chiSquareSf(x: number, df: number): number {
  return gammaQ(df / 2, x / 2);
}

/**
 * Pearson's goodness-of-fit test of observed counts against expected probabilities; cells whose
 * expected count is below `minExpected` are pooled into one.
 */
export function chiSquareTest(
  observed: ArrayLike<number>,
  probs: ArrayLike<number>,
  minExpected = 5,
): { stat: number; df: number; p: number } {
  let n = 0;
  for (let i = 0; i < observed.length; i++) n += observed[i]!;
  let stat = 0;
  let cells = 0;
  let poolO = 0;
  let poolE = 0;
  for (let i = 0; i < observed.length; i++) {
    const e = probs[i]! * n;
    const o = observed[i]!;
    if (e < minExpected) {
      poolO += o;
      poolE += e;
      if (e === 0 && o > 0) return { stat: Infinity, df: 0, p: 0 };
      continue;
    }
    stat += (o - e) ** 2 / e;
    cells++;
  }
  if (poolE > 0) {
    stat += (poolO - poolE) ** 2 / poolE;
    cells++;
  }
  const df = cells - 1;
  return { stat, df, p: chiSquareSf(stat, df) };
}
