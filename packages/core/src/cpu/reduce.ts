// Reductions over one axis, softmax / log-softmax and RMSNorm on the CPU. Sums accumulate in f64.
import type { Backend, KernelTensor } from '../backend.js';
import type { KernelAttrs } from '../kernel-types.js';
import { splitAt } from '../shape.js';
import { floatArray, num, result } from './backend.js';
import { takeFloat } from './pool.js';
import { rmsnormSimd } from './rmsnorm-simd.js';

export function reduceKernel(_b: Backend, [x]: KernelTensor[], { op, axis }: KernelAttrs['reduce']): KernelTensor[] {
  const [outer, len, inner] = splitAt(x!.shape, axis);
  const v = num(x!);
  const shape = x!.shape.filter((_, i) => i !== axis);
  const arg = op === 'argmax' || op === 'argmin';
  const out = arg ? new Int32Array(outer * inner) : floatArray(x!.dtype, outer * inner);
  if (len === 0 && op !== 'sum')
    throw new RangeError(`${op} over an empty axis ${axis} of shape [${x!.shape.join(', ')}]`);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const base = o * len * inner + i;
      if (op === 'sum') {
        let s = 0;
        for (let j = 0; j < len; j++) s += v[base + j * inner]!;
        out[o * inner + i] = s;
        continue;
      }
      const wantMax = op === 'max' || op === 'argmax';
      let best = v[base]!;
      let bi = 0;
      for (let j = 1; j < len; j++) {
        const e = v[base + j * inner]!;
        // NaN wins, so it propagates rather than hiding.
        if (Number.isNaN(best)) break;
        if (Number.isNaN(e) || (wantMax ? e > best : e < best)) {
          best = e;
          bi = j;
        }
      }
      out[o * inner + i] = arg ? bi : best;
    }
  }
  return [result(arg ? 'i32' : x!.dtype, shape, out)];
}

export function softmaxKernel(_b: Backend, [x]: KernelTensor[], { log }: KernelAttrs['softmax']): KernelTensor[] {
  const n = x!.shape[x!.shape.length - 1] ?? 1;
  const v = num(x!);
  const out = takeFloat(x!.dtype, v.length);
  for (let r = 0; r < v.length; r += n) {
    let m = -Infinity;
    for (let j = 0; j < n; j++) m = Math.max(m, v[r + j]!);
    if (m === -Infinity) m = 0; // a fully masked row gives NaN below rather than a fake distribution
    let s = 0;
    for (let j = 0; j < n; j++) s += Math.exp(v[r + j]! - m);
    if (log) {
      const ls = Math.log(s) + m;
      for (let j = 0; j < n; j++) out[r + j] = v[r + j]! - ls;
    } else {
      for (let j = 0; j < n; j++) out[r + j] = Math.exp(v[r + j]! - m) / s;
    }
  }
  return [result(x!.dtype, x!.shape, out)];
}

export function rmsnormKernel(_b: Backend, [x, w]: KernelTensor[], { eps }: KernelAttrs['rmsnorm']): KernelTensor[] {
  const n = x!.shape[x!.shape.length - 1] ?? 1;
  const v = num(x!);
  const wv = num(w!);
  const out = takeFloat(x!.dtype, v.length);
  const rows = n ? v.length / n : 0;
  let r = 0;
  // f32: rmsnorm-simd.ts's kernel (the loops below, operation for operation) unless it declines
  if (v instanceof Float32Array && wv instanceof Float32Array && out instanceof Float32Array && wv.length === n)
    if (rmsnormSimd(v, wv, eps, out)) r = rows;
  // Two rows at a time: their sums of squares are independent chains the CPU overlaps (the loop is
  // bound by the f64 adds' latency); each row's sum runs in the same order as alone.
  for (; r + 1 < rows; r += 2) {
    const a = r * n;
    const b = a + n;
    let s0 = 0;
    let s1 = 0;
    for (let j = 0; j < n; j++) {
      s0 += v[a + j]! * v[a + j]!;
      s1 += v[b + j]! * v[b + j]!;
    }
    const i0 = 1 / Math.sqrt(s0 / n + eps);
    const i1 = 1 / Math.sqrt(s1 / n + eps);
    for (let j = 0; j < n; j++) {
      out[a + j] = v[a + j]! * i0 * wv[j]!;
      out[b + j] = v[b + j]! * i1 * wv[j]!;
    }
  }
  if (r < rows) {
    const a = r * n;
    let ss = 0;
    for (let j = 0; j < n; j++) ss += v[a + j]! * v[a + j]!;
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let j = 0; j < n; j++) out[a + j] = v[a + j]! * inv * wv[j]!;
  }
  return [result(x!.dtype, x!.shape, out)];
}
