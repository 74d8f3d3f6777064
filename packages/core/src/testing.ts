// @dsv3/core/testing: what a numeric kernel's tests need — seeded random data, error metrics and a
// float64 central-difference gradient check — for this repo's packages and for users writing kernels.
import { noGrad } from './autograd.js';
import { mul } from './ops/elementwise.js';
import { tensor } from './ops/creation.js';
import { sum } from './ops/reduce.js';
import { Rng } from './rng.js';
import type { Parameter } from './nn/module.js';
import type { Tensor } from './tensor.js';

/** n seeded uniform values in [lo, hi) (never all zero for lo < hi). */
export function randomUniform(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  return new Rng(seed).fillUniform(new Float64Array(n), lo, hi) as Float64Array;
}

/** A seeded uniform f64 tensor (the dtype gradient checks run in). */
export function randomTensor64(shape: readonly number[], seed: number, lo = -1, hi = 1): Tensor {
  return tensor(
    randomUniform(
      shape.reduce((a, b) => a * b, 1),
      seed,
      lo,
      hi,
    ),
    { shape, dtype: 'f64' },
  );
}

export interface RelativeErrorOptions {
  /**
   * 'match': NaN and ±Infinity must sit at the same places with the same values in both (else the
   * error is Infinity) and are left out of the sums; default: they enter the sums (a NaN anywhere
   * makes the error NaN).
   */
  nonFinite?: 'match';
}

/** ‖a − b‖ / ‖b‖ (relative L2 error of `a` against the reference `b`). */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>, opts: RelativeErrorOptions = {}): number {
  if (a.length !== b.length) throw new RangeError(`relativeError: lengths differ (${a.length} vs ${b.length})`);
  const match = opts.nonFinite === 'match';
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (match && !(Number.isFinite(x) && Number.isFinite(y))) {
      if (!Object.is(x, y) && !(Number.isNaN(x) && Number.isNaN(y))) return Infinity;
      continue;
    }
    num += (x - y) ** 2;
    den += y ** 2;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-300);
}

/**
 * Relative error of `analytic` against central differences of `lossAt` around `base`, at up to
 * `maxElems` elements spread evenly.
 */
function compareWithCentralDifferences(
  analytic: ArrayLike<number>,
  base: Float64Array,
  lossAt: (v: Float64Array) => number,
  h: number,
  maxElems: number,
): number {
  const step = Math.max(1, Math.floor(base.length / maxElems));
  const num: number[] = [];
  const ana: number[] = [];
  for (let e = 0; e < base.length; e += step) {
    const at = (delta: number): number => {
      const v = Float64Array.from(base);
      v[e]! += delta;
      return lossAt(v);
    };
    num.push((at(h) - at(-h)) / (2 * h));
    ana.push(analytic[e]!);
  }
  return relativeError(ana, num);
}

export interface GradCheckOptions {
  /** Finite-difference step (default 1e-6). */
  h?: number;
  /** Elements checked per input, evenly spread (default 64). */
  maxElems?: number;
  /** Indices of the inputs to differentiate (default all). */
  wrt?: number[];
}

/**
 * Compares autograd's gradients of sum(f(inputs) · W), W a fixed random weighting, with central
 * differences, for each input in `wrt`. Inputs should be f64 CPU tensors. Returns the relative error
 * per checked input (undefined for the others); a gradient that never arrives counts as Infinity.
 */
export function finiteDifferenceCheck(
  f: (...xs: Tensor[]) => Tensor,
  inputs: Tensor[],
  opts: GradCheckOptions = {},
): (number | undefined)[] {
  const h = opts.h ?? 1e-6;
  const wrt = opts.wrt ?? inputs.map((_, i) => i);
  const leaves = inputs.map((t, i) => (wrt.includes(i) ? t.detach().requireGrad() : t));
  const out = f(...leaves);
  const w = tensor(randomUniform(out.size, 4242, 0.5, 1.5), { shape: [...out.shape], dtype: out.dtype });
  sum(mul(out, w)).backward();
  const lossAt = (xs: Tensor[]): number => noGrad(() => sum(mul(f(...xs), w)).dataSync()[0]!);
  return inputs.map((input, i) => {
    if (!wrt.includes(i)) return undefined;
    const analytic = leaves[i]!.grad?.dataSync();
    if (!analytic) return Infinity;
    const base = input.dataSync() as Float64Array;
    const at = (v: Float64Array): number =>
      lossAt(inputs.map((t, k) => (k === i ? tensor(v, { shape: [...t.shape], dtype: 'f64' }) : t)));
    return compareWithCentralDifferences(analytic, base, at, h, opts.maxElems ?? 64);
  });
}

export interface ParameterGradientOptions {
  /** Finite-difference step (default 1e-6). */
  h?: number;
  /** Elements checked per parameter, evenly spread (default 24). */
  maxElems?: number;
}

/**
 * Compares the gradients that `loss().backward()` leaves on each parameter (f64 on the CPU) with central
 * differences of the scalar `loss`, perturbing the parameter's value in place and restoring it.
 * Returns the relative error per parameter; a gradient that never arrives counts as Infinity.
 */
export function parameterGradientCheck(
  loss: () => Tensor,
  params: Iterable<readonly [string, Parameter]>,
  opts: ParameterGradientOptions = {},
): { name: string; error: number }[] {
  const h = opts.h ?? 1e-6;
  const list = [...params];
  for (const [, p] of list) p.value.zeroGrad();
  loss().backward();
  const lossAt = (): number => noGrad(() => loss().dataSync()[0]!);
  return list.map(([name, p]) => {
    const analytic = p.grad?.dataSync();
    if (!analytic) return { name, error: Infinity };
    const base = Float64Array.from(p.value.dataSync());
    const shape = [...p.value.shape];
    const dtype = p.value.dtype;
    const set = (v: Float64Array): void => p.assign(tensor(v, { shape, dtype }));
    const error = compareWithCentralDifferences(
      analytic,
      base,
      (v) => {
        set(v);
        return lossAt();
      },
      h,
      opts.maxElems ?? 24,
    );
    set(base);
    return { name, error };
  });
}

export { bitMismatches, expectSameBits, type SameBitsOptions } from './same-bits.js';
