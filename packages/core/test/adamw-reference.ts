// AdamW's scalar update and random operands, shared by the SIMD kernel's and the optimizer jobs' tests.
import * as T from '../src/index.js';
import type { AdamWKernelAttrs } from '../src/optim/adamw.js';

/**
 * The kernels' scalar loop written out in f64, g read as f32(g·s), moments through f32 (bf16: decoded,
 * then encoded): the reference their lanes must match exactly.
 */
export function adamwReference(
  w: Float32Array,
  g: Float32Array,
  m: Float32Array | Uint16Array,
  v: Float32Array | Uint16Array,
  a: AdamWKernelAttrs,
  s = 1,
): void {
  const mf = m instanceof Uint16Array ? T.decodeBf16(m) : m;
  const vf = v instanceof Uint16Array ? T.decodeBf16(v) : v;
  for (let i = 0; i < w.length; i++) {
    const gi = Math.fround(g[i]! * s);
    const mi = a.b1 * mf[i]! + (1 - a.b1) * gi;
    const vi = a.b2 * vf[i]! + (1 - a.b2) * gi * gi;
    mf[i] = mi;
    vf[i] = vi;
    w[i] = w[i]! * a.decay - (a.lr * (mi / a.c1)) / (Math.sqrt(vi / a.c2) + a.eps);
  }
  if (m instanceof Uint16Array) T.encodeBf16(mf, m as Uint16Array<ArrayBuffer>);
  if (v instanceof Uint16Array) T.encodeBf16(vf, v as Uint16Array<ArrayBuffer>);
}

/** n normal samples times `scale` (squared when `positive`: second moments). */
export function randomF32(n: number, rng: T.Rng, scale: number, positive = false): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const x = rng.normal() * scale;
    a[i] = positive ? x * x : x;
  }
  return a;
}

/** Attributes of update `step` (1-based): bias corrections of that step, a falling rate, decay on odd steps only. */
export function attrsAt(step: number, bf16: boolean): AdamWKernelAttrs {
  return {
    b1: 0.9,
    b2: 0.95,
    c1: 1 - 0.9 ** step,
    c2: 1 - 0.95 ** step,
    eps: 1e-8,
    lr: 3e-3 / step,
    decay: step % 2 ? 1 - 3e-4 : 1,
    stateDType: bf16 ? 'bf16' : 'f32',
  };
}
