// Fused CPU kernels of the training step: one pass each where the composed ops took many (and as
// many temporaries). Each has a composed fallback in its op, which is what other backends run.
//   adamw            [w, g, m, v] → [w', m', v']   decoupled-decay AdamW, moments f32/bf16/f64
//   adamwInPlace     [w, g, m, v] → []              the same, overwriting w, m and v
//   addInPlace       [a, b] → []   a += b;   scaleInPlace  [x, s] → []   x *= s  (gradients a backward owns)
//   adamwMany        [scale, w1, g1, m1, v1, …] → []  the same over many f32 parameters, g read as f32(g·scale)
//   toResident       [x] → [x'] a copy in the GEMM engine's memory (host when it has no room)
//   sumSquares       [x] → [Σx²] (0-d f64: the norm of f32 gradients keeps every digit)
//   sumSquaresMany   [x1, x2, …] → [Σx1², Σx2², …] (f64 [count])
//   rmsnormBackward  [x, w, g] → [dx, dw]
//   softmaxBackward  [y, g] → [dx]   (log: y is log-softmax)
//   siluBackward     [x, g] → [dx]
//   causalSoftmax    [scores] → [p]  softmax(scale·scores) over the last axis with keys after the query masked
import type { Backend, KernelTensor } from '../backend.js';
import { copyOf, decodeBf16, encodeBf16, type StorageArray } from '../dtype.js';
import { sizeOf } from '../shape.js';
import type { AdamWKernelAttrs } from '../optim/adamw.js';
import { type CpuBackend, raw, wrap } from './backend.js';
import { takeFloat } from './pool.js';
import { finishProductsReading } from './gemm/index.js';
import { expF32 } from './vector-exp.js';
import { adamwPairs } from './adamw-simd.js';
import { type AdamWOperands, adamwResident, sumSquaresResident } from './optimizer-jobs.js';
import { arithF32 } from './arith-simd.js';
import { rmsnormBackwardSimd } from './rmsnorm-simd.js';
import { siluBackwardF32 } from './gated-simd.js';

type F = Float32Array | Float64Array;

/** Elements per pass of the in-place update: bf16 moments are decoded and re-encoded a chunk at a time. */
const ADAMW_CHUNK = 4096;
const momentScratch = { m: new Float32Array(ADAMW_CHUNK), v: new Float32Array(ADAMW_CHUNK) };

/**
 * AdamW on the parameter's own storage: w, m and v are overwritten (no buffer is allocated, which for
 * big parameters would cost its page faults every step). The moments are computed at the weights'
 * precision and stored in their own dtype; the weight update uses them unrounded.
 */
export function adamwInPlaceKernel(_b: Backend, [w, g, m, v]: KernelTensor[], a: AdamWKernelAttrs): KernelTensor[] {
  const [wv, gv, mStore, vStore] = adamwOperands(w!, g!, m!, v!);
  adamwHost(wv, gv, mStore, vStore, a, 1);
  return [];
}

/** The raw arrays of one parameter's [w, g, m, v], checked: equal sizes, both moments bf16 or neither. */
function adamwOperands(
  w: KernelTensor,
  g: KernelTensor,
  m: KernelTensor,
  v: KernelTensor,
): [F, F, F | Uint16Array, F | Uint16Array] {
  const n = sizeOf(w.shape);
  for (const t of [g, m, v]) {
    if (sizeOf(t.shape) !== n)
      throw new Error(`adamw: operand of shape [${t.shape}] for a parameter of shape [${w.shape}]`);
  }
  if ((m.dtype === 'bf16') !== (v.dtype === 'bf16'))
    throw new TypeError(`adamw: moments of dtypes ${m.dtype} and ${v.dtype}`);
  const view = <T extends StorageArray>(a: T) => a.subarray(0, n) as T;
  return [view(raw(w) as F), view(raw(g) as F), view(raw(m) as F | Uint16Array), view(raw(v) as F | Uint16Array)];
}

/**
 * The update on host arrays, each gradient read as g · scale (rounded to f32 for f32 gradients, as a
 * `g *= scale` pass stores it; scale 1: g). f32/f64 moments are updated where they are; bf16 ones
 * through the scratch, a chunk at a time.
 */
function adamwHost(
  wv: F,
  gv: F,
  mStore: F | Uint16Array,
  vStore: F | Uint16Array,
  a: AdamWKernelAttrs,
  scale: number,
): void {
  const n = wv.length;
  const { b1, b2, eps, c1, c2, lr, decay } = a;
  const bf16 = mStore instanceof Uint16Array;
  // f32 weights and gradients, f32 or bf16 moments: pairs of elements in SIMD (bitwise this loop's
  // result), the odd one here.
  const simd =
    wv instanceof Float32Array &&
    gv instanceof Float32Array &&
    (bf16 || (mStore instanceof Float32Array && vStore instanceof Float32Array));
  const done = simd
    ? adamwPairs(wv, gv, mStore as Float32Array | Uint16Array, vStore as Float32Array | Uint16Array, n, a, scale)
    : 0;
  const roundG = gv instanceof Float32Array;
  for (let s = done; s < n; s += ADAMW_CHUNK) {
    const e = Math.min(n, s + ADAMW_CHUNK);
    let mv: F;
    let vv: F;
    let at: number;
    if (bf16) {
      mv = decodeBf16((mStore as Uint16Array).subarray(s, e), momentScratch.m.subarray(0, e - s));
      vv = decodeBf16((vStore as Uint16Array).subarray(s, e), momentScratch.v.subarray(0, e - s));
      at = s;
    } else {
      mv = mStore as F;
      vv = vStore as F;
      at = 0;
    }
    for (let i = s; i < e; i++) {
      const gi = roundG ? Math.fround(gv[i]! * scale) : gv[i]! * scale;
      const mi = b1 * mv[i - at]! + (1 - b1) * gi;
      const vi = b2 * vv[i - at]! + (1 - b2) * gi * gi;
      mv[i - at] = mi;
      vv[i - at] = vi;
      wv[i] = wv[i]! * decay - (lr * (mi / c1)) / (Math.sqrt(vi / c2) + eps);
    }
    if (bf16) {
      encodeBf16(mv as Float32Array, (mStore as Uint16Array<ArrayBuffer>).subarray(s, e));
      encodeBf16(vv as Float32Array, (vStore as Uint16Array<ArrayBuffer>).subarray(s, e));
    }
  }
}

/**
 * [scale, w1, g1, m1, v1, w2, …] → []: AdamW of many f32 parameters at once, in place, each gradient
 * read as f32(g · scale) (scale: one f32 or f64 value, rounded to f32 as clipping's cast rounds it).
 * Parameters whose w, m and v are resident in the GEMM engine's memory run as one job of its threads
 * (optimizer-jobs.ts); the rest on this thread. Bitwise the per-parameter update after `g *= scale`.
 */
export function adamwManyKernel(_b: Backend, [s, ...rest]: KernelTensor[], a: AdamWKernelAttrs): KernelTensor[] {
  const scale = Math.fround(scalarOf(s!, 'adamwMany'));
  if (rest.length % 4 !== 0) throw new Error(`adamwMany: ${rest.length} operands are not [w, g, m, v] groups`);
  const list: AdamWOperands[] = [];
  for (let i = 0; i < rest.length; i += 4) {
    const [w, g, m, v] = adamwOperands(rest[i]!, rest[i + 1]!, rest[i + 2]!, rest[i + 3]!);
    if (
      !(w instanceof Float32Array && g instanceof Float32Array) ||
      m instanceof Float64Array ||
      v instanceof Float64Array
    )
      throw new TypeError(
        `adamwMany: f32 weights and gradients with f32 or bf16 moments, got ${rest[i]!.dtype}, ${rest[i + 1]!.dtype}, ${rest[i + 2]!.dtype}`,
      );
    list.push({ w, g, m, v });
  }
  for (const o of adamwResident(list, a, scale)) adamwHost(o.w, o.g, o.m, o.v, a, scale);
  return [];
}

/** [w, g, m, v] → fresh [w', m', v']: the in-place update on copies (for callers that keep the old values). */
export function adamwKernel(b: Backend, [w, g, m, v]: KernelTensor[], a: AdamWKernelAttrs): KernelTensor[] {
  const copy = (t: KernelTensor): KernelTensor => wrap(t.dtype, t.shape, copyOf(raw(t)));
  const out = [copy(w!), copy(m!), copy(v!)];
  adamwInPlaceKernel(b, [out[0]!, g!, out[1]!, out[2]!], a);
  return out;
}

/**
 * [x] → a copy of x in storage resident in the GEMM engine's memory (host storage when the engine has
 * no room), for state a job of the engine's threads updates in place (AdamW's weights and moments).
 */
export function toResidentKernel(b: Backend, [x]: KernelTensor[]): KernelTensor[] {
  const n = sizeOf(x!.shape);
  const storage = (b as CpuBackend).allocResident(x!.dtype, n);
  (storage.data as StorageArray).set((raw(x!) as StorageArray).subarray(0, n) as never);
  return [{ storage, shape: x!.shape, dtype: x!.dtype }];
}

/** a += b (same shape, f32 or f64): a gradient accumulated into the buffer that holds it. */
export function addInPlaceKernel(_b: Backend, [a, b]: KernelTensor[]): KernelTensor[] {
  const n = sizeOf(a!.shape);
  if (sizeOf(b!.shape) !== n || a!.dtype !== b!.dtype)
    throw new Error(`addInPlace: [${b!.shape}] ${b!.dtype} into [${a!.shape}] ${a!.dtype}`);
  const into = (raw(a!) as F).subarray(0, n);
  // a pending gradient may also be the operand a weight gradient reads in the background (a residual's
  // gradient flows on unchanged to a Linear's output): that product reads it before it changes
  finishProductsReading(into);
  addInto(into, (raw(b!) as F).subarray(0, n));
  return [];
}

/** x *= s (s a one-element tensor, taken in x's dtype as `mul` would cast it): gradients clipped in place. */
export function scaleInPlaceKernel(_b: Backend, [x, s]: KernelTensor[]): KernelTensor[] {
  const into = (raw(x!) as F).subarray(0, sizeOf(x!.shape));
  finishProductsReading(into); // as addInPlace
  scaleInto(into, scalarOf(s!, 'scaleInPlace'));
  return [];
}

/** The value of a one-element f32 or f64 tensor (a factor), or a clear error. */
function scalarOf(s: KernelTensor, op: string): number {
  const sv = raw(s) as F | Uint16Array;
  if (!(sv instanceof Float32Array || sv instanceof Float64Array) || sizeOf(s.shape) !== 1)
    throw new TypeError(`${op}: the factor must be one f32 or f64 value, got ${s.dtype} [${s.shape}]`);
  return sv[0]!;
}

export function sumSquaresKernel(_b: Backend, [x]: KernelTensor[]): KernelTensor[] {
  return [wrap('f64', [], Float64Array.of(sumOfSquares((raw(x!) as F).subarray(0, sizeOf(x!.shape)))))];
}

/**
 * [x1, x2, …] → [s] (f64 [count]): s[i] = Σ x_i² in f64, each bitwise sumSquares of x_i; the f32 arrays
 * shared between the GEMM engine's threads (optimizer-jobs.ts), f64 ones on this thread.
 */
export function sumSquaresManyKernel(_b: Backend, xs: KernelTensor[]): KernelTensor[] {
  const arrays = xs.map((x) => (raw(x) as F).subarray(0, sizeOf(x.shape)));
  const out = new Float64Array(arrays.length);
  const f32 = arrays.flatMap((x, i) => (x instanceof Float32Array ? [i] : []));
  const left = sumSquaresResident(
    f32.map((i) => arrays[i] as Float32Array),
    f32.map((i) => out.subarray(i, i + 1)),
  );
  const rest = [...arrays.keys()].filter((i) => !(arrays[i] instanceof Float32Array)).concat(left.map((j) => f32[j]!));
  for (const i of rest) out[i] = sumOfSquares(arrays[i]!);
  return [wrap('f64', [arrays.length], out)];
}

// The array forms of the three kernels above, for code that keeps gradients in its own flat arrays
// (@dsv3/parallel's buckets). One loop per array type keeps each monomorphic for V8.

/** d += s elementwise (same dtype and length). */
export function addInto(d: F, s: F): void {
  if (d instanceof Float32Array) addF32(d, s as Float32Array);
  else addF64(d, s as Float64Array);
}

function addF32(d: Float32Array, s: Float32Array): void {
  if (arithF32('add', d, 0, 1, s, 0, 1, d, 0, d.length)) return;
  for (let i = 0; i < d.length; i++) d[i]! += s[i]!;
}

function addF64(d: Float64Array, s: Float64Array): void {
  for (let i = 0; i < d.length; i++) d[i]! += s[i]!;
}

/**
 * d *= s elementwise over f32 arrays of one length, each product rounded to f32 (the loop's rounding:
 * bitwise it); in SIMD, on the GEMM engine's threads where d lies in its memory.
 */
export function mulInto(d: Float32Array, s: Float32Array): void {
  if (s.length !== d.length) throw new RangeError(`mulInto: lengths ${d.length} and ${s.length} differ`);
  if (arithF32('mul', d, 0, 1, s, 0, 1, d, 0, d.length)) return;
  for (let i = 0; i < d.length; i++) d[i]! *= s[i]!;
}

/** x *= scale, the scale rounded to x's dtype first (as a tensor product with a scalar rounds it). */
export function scaleInto(x: F, scale: number): void {
  if (x instanceof Float32Array) scaleF32(x, Math.fround(scale));
  else scaleF64(x, scale);
}

const factor = new Float32Array(1);

function scaleF32(x: Float32Array, s: number): void {
  factor[0] = s;
  if (arithF32('mul', x, 0, 1, factor, 0, 0, x, 0, x.length)) return;
  for (let i = 0; i < x.length; i++) x[i]! *= s;
}

function scaleF64(x: Float64Array, s: number): void {
  for (let i = 0; i < x.length; i++) x[i]! *= s;
}

/** Σ x² in float64 (an f32 gradient's norm keeps every digit). */
export function sumOfSquares(x: F): number {
  return x instanceof Float32Array ? sumSquaresF32(x) : sumSquaresF64(x);
}

function sumSquaresF32(x: Float32Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i]! * x[i]!;
  return s;
}

function sumSquaresF64(x: Float64Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i]! * x[i]!;
  return s;
}

/** r = (mean(x²)+eps)^-½;  dx = r·(g·w) − x·r³·mean(g·w·x);  dw = Σ_rows g·x·r. */
export function rmsnormBackwardKernel(
  _b: Backend,
  [x, w, g]: KernelTensor[],
  { eps }: { eps: number },
): KernelTensor[] {
  const xv = raw(x!) as F;
  const wv = raw(w!) as F;
  const gv = raw(g!) as F;
  const n = wv.length;
  const dx = takeFloat(x!.dtype, xv.length);
  const dw = new Float64Array(n);
  let r = 0;
  // f32: rmsnorm-simd.ts's kernel (the loops below, operation for operation) unless it declines
  if (
    xv instanceof Float32Array &&
    wv instanceof Float32Array &&
    gv instanceof Float32Array &&
    dx instanceof Float32Array
  )
    if (rmsnormBackwardSimd(xv, wv, gv, eps, dx, dw)) r = xv.length;
  // Two rows at a time (their sums are independent chains the CPU overlaps); each row's sums, and
  // dw's over rows, run in the same order as one row at a time.
  for (; n > 0 && r + 2 * n <= xv.length; r += 2 * n) {
    const b = r + n;
    let ss0 = 0;
    let dot0 = 0;
    let ss1 = 0;
    let dot1 = 0;
    for (let j = 0; j < n; j++) {
      const x0 = xv[r + j]!;
      const x1 = xv[b + j]!;
      ss0 += x0 * x0;
      dot0 += gv[r + j]! * wv[j]! * x0;
      ss1 += x1 * x1;
      dot1 += gv[b + j]! * wv[j]! * x1;
    }
    const inv0 = 1 / Math.sqrt(ss0 / n + eps);
    const c0 = inv0 * inv0 * inv0 * (dot0 / n);
    const inv1 = 1 / Math.sqrt(ss1 / n + eps);
    const c1 = inv1 * inv1 * inv1 * (dot1 / n);
    for (let j = 0; j < n; j++) {
      const x0 = xv[r + j]!;
      const g0 = gv[r + j]!;
      const x1 = xv[b + j]!;
      const g1 = gv[b + j]!;
      dx[r + j] = inv0 * g0 * wv[j]! - x0 * c0;
      dx[b + j] = inv1 * g1 * wv[j]! - x1 * c1;
      dw[j]! += g0 * x0 * inv0;
      dw[j]! += g1 * x1 * inv1;
    }
  }
  if (r < xv.length) {
    let ss = 0;
    let dot = 0;
    for (let j = 0; j < n; j++) {
      const xj = xv[r + j]!;
      ss += xj * xj;
      dot += gv[r + j]! * wv[j]! * xj;
    }
    const inv = 1 / Math.sqrt(ss / n + eps);
    const c = inv * inv * inv * (dot / n);
    for (let j = 0; j < n; j++) {
      const xj = xv[r + j]!;
      const gj = gv[r + j]!;
      dx[r + j] = inv * gj * wv[j]! - xj * c;
      dw[j]! += gj * xj * inv;
    }
  }
  return [wrap(x!.dtype, x!.shape, dx), wrap(w!.dtype, w!.shape, w!.dtype === 'f64' ? dw : Float32Array.from(dw))];
}

/** softmax: dx = y·(g − Σ g·y);  log-softmax: dx = g − exp(y)·Σ g. Per row of the last axis. */
export function softmaxBackwardKernel(_b: Backend, [y, g]: KernelTensor[], { log }: { log: boolean }): KernelTensor[] {
  const yv = raw(y!) as F;
  const gv = raw(g!) as F;
  const n = y!.shape[y!.shape.length - 1] ?? 1;
  const dx = takeFloat(y!.dtype, yv.length);
  for (let r = 0; r < yv.length; r += n) {
    let s = 0;
    if (log) {
      for (let j = 0; j < n; j++) s += gv[r + j]!;
      for (let j = 0; j < n; j++) dx[r + j] = gv[r + j]! - Math.exp(yv[r + j]!) * s;
    } else {
      for (let j = 0; j < n; j++) s += gv[r + j]! * yv[r + j]!;
      for (let j = 0; j < n; j++) dx[r + j] = yv[r + j]! * (gv[r + j]! - s);
    }
  }
  return [wrap(y!.dtype, y!.shape, dx)];
}

/** d silu(x) = g·σ(x)·(1 + x·(1 − σ(x))). */
export function siluBackwardKernel(_b: Backend, [x, g]: KernelTensor[]): KernelTensor[] {
  const xv = raw(x!) as F;
  const gv = raw(g!) as F;
  const dx = takeFloat(x!.dtype, xv.length);
  // f32: gated-simd.ts's kernel (the loops below, operation for operation) unless SIMD128 is missing
  if (dx instanceof Float32Array && siluBackwardF32(xv as Float32Array, gv as Float32Array, dx))
    return [wrap(x!.dtype, x!.shape, dx)];
  // f32: every e^-x in one vectorized pass (into dx), then the products.
  if (dx instanceof Float32Array) expF32(xv as Float32Array, 0, dx, 0, xv.length, -1);
  else for (let i = 0; i < xv.length; i++) dx[i] = Math.exp(-xv[i]!);
  for (let i = 0; i < xv.length; i++) {
    const xi = xv[i]!;
    const s = 1 / (1 + dx[i]!);
    dx[i] = gv[i]! * s * (1 + xi * (1 - s));
  }
  return [wrap(x!.dtype, x!.shape, dx)];
}

/**
 * p = softmax(scale·s) over the last axis (keys), where query i (the second-to-last axis, of q
 * queries) sees keys j ≤ i + (k − q); the masked entries are exactly 0.
 */
export function causalSoftmaxKernel(_b: Backend, [s]: KernelTensor[], { scale }: { scale: number }): KernelTensor[] {
  const sv = raw(s!) as F;
  const k = s!.shape[s!.shape.length - 1]!;
  const q = s!.shape[s!.shape.length - 2]!;
  const p = takeFloat(s!.dtype, sv.length);
  const e = new Float64Array(k);
  for (let r = 0; r < sv.length; r += k) {
    const i = (r / k) % q;
    const seen = Math.min(k, i + 1 + (k - q));
    let m = -Infinity;
    for (let j = 0; j < seen; j++) m = Math.max(m, sv[r + j]! * scale);
    let sum = 0;
    for (let j = 0; j < seen; j++) {
      const ej = Math.exp(sv[r + j]! * scale - m);
      e[j] = ej;
      sum += ej;
    }
    for (let j = 0; j < seen; j++) p[r + j] = e[j]! / sum;
    p.fill(0, r + Math.max(seen, 0), r + k);
  }
  return [wrap(s!.dtype, s!.shape, p)];
}

/**
 * Rotary embedding of x [B, S, H, d] by angles given as cos/sin [Bc, S, d/2] (Bc = B or 1): pairs
 * (x_2i, x_2i+1) when interleaved, else (x_i, x_i+d/2), rotated forward — or backward (`inverse`,
 * the transpose, which is the gradient).
 */
export function ropeKernel(
  _b: Backend,
  [x, cos, sin]: KernelTensor[],
  { interleave, inverse }: { interleave: boolean; inverse: boolean },
): KernelTensor[] {
  const [B, S, H, d] = x!.shape as [number, number, number, number];
  const half = d / 2;
  const xv = raw(x!) as F;
  const cv = raw(cos!) as F;
  const sv = raw(sin!) as F;
  const perB = cos!.shape[0] === 1 ? 0 : S * half;
  const y = takeFloat(x!.dtype, xv.length);
  const sign = inverse ? -1 : 1;
  const [step, other] = interleave ? [2, 1] : [1, half];
  for (let b = 0; b < B; b++)
    for (let s = 0; s < S; s++) {
      const t = b * perB + s * half;
      for (let h = 0; h < H; h++) {
        const r = ((b * S + s) * H + h) * d;
        for (let i = 0; i < half; i++) {
          const ia = r + i * step;
          const c = cv[t + i]!;
          const sn = sign * sv[t + i]!;
          const a = xv[ia]!;
          const o = xv[ia + other]!;
          y[ia] = a * c - o * sn;
          y[ia + other] = o * c + a * sn;
        }
      }
    }
  return [wrap(x!.dtype, x!.shape, y)];
}

/**
 * Cross-entropy rows of logits [N, V] against targets [N] (i32): loss_n = lse_n − x[n, t_n], with
 * lse_n = log Σ_j exp(x[n, j]); rows whose target is `ignoreIndex` give loss 0.
 */
export function crossEntropyKernel(
  _b: Backend,
  [x, t]: KernelTensor[],
  { ignoreIndex }: { ignoreIndex: number },
): KernelTensor[] {
  const xv = raw(x!) as F;
  const tv = raw(t!) as Int32Array;
  const [N, V] = x!.shape as [number, number];
  const loss = takeFloat(x!.dtype, N);
  const lse = takeFloat(x!.dtype, N);
  // f32 rows' exps in one vectorized pass each, through this scratch row.
  const row = xv instanceof Float32Array ? new Float32Array(V) : null;
  for (let n = 0; n < N; n++) {
    const target = tv[n]!;
    if (target === ignoreIndex) {
      loss[n] = 0;
      lse[n] = 0;
      continue;
    }
    const r = n * V;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, xv[r + j]!);
    let z = 0;
    if (row) {
      expF32(xv as Float32Array, r, row, 0, V, 1, -m);
      for (let j = 0; j < V; j++) z += row[j]!;
    } else for (let j = 0; j < V; j++) z += Math.exp(xv[r + j]! - m);
    const l = m + Math.log(z);
    lse[n] = l;
    loss[n] = l - xv[r + target]!;
  }
  return [wrap(x!.dtype, [N], loss), wrap(x!.dtype, [N], lse)];
}

/** d logits[n, j] = g_n · (softmax(x_n)_j − [j = t_n]); zero rows where the target is ignored. */
export function crossEntropyBackwardKernel(
  _b: Backend,
  [x, t, lse, g]: KernelTensor[],
  { ignoreIndex }: { ignoreIndex: number },
): KernelTensor[] {
  const xv = raw(x!) as F;
  const tv = raw(t!) as Int32Array;
  const lv = raw(lse!) as F;
  const gv = raw(g!) as F;
  const [N, V] = x!.shape as [number, number];
  const dx = takeFloat(x!.dtype, N * V);
  for (let n = 0; n < N; n++) {
    const r = n * V;
    const target = tv[n]!;
    if (target === ignoreIndex) {
      dx.fill(0, r, r + V);
      continue;
    }
    const gn = gv[n]!;
    const l = lv[n]!;
    if (dx instanceof Float32Array) {
      expF32(xv as Float32Array, r, dx, r, V, 1, -l);
      for (let j = 0; j < V; j++) dx[r + j] = gn * dx[r + j]!;
    } else for (let j = 0; j < V; j++) dx[r + j] = gn * Math.exp(xv[r + j]! - l);
    dx[r + target]! -= gn;
  }
  return [wrap(x!.dtype, x!.shape, dx)];
}
