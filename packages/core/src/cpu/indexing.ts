// Data-movement CPU kernels: gathers and scatters, strided copies (slice / permute / broadcast),
// pad, concat, top-k, cumsum, and the creation kernels full and iota.
import type { Backend, KernelTensor } from '../backend.js';
import { allocStorageArray } from '../dtype.js';
import type { KernelAttrs } from '../kernel-types.js';
import { sizeOf, splitAt, stridesOf } from '../shape.js';
import { floatArray, num, raw, result, wrap } from './backend.js';
import { takeF32 } from './pool.js';
import { fillF32 } from './arith-simd.js';
import { forEachRow } from './elementwise.js';
import { gatherRowsResident } from './gather-rows-simd.js';
import { engineOwning } from './gemm/runtime.js';
import { scatterAddRowsResident } from './scatter-rows-simd.js';
import { F32WorkArrays } from './work-arrays.js';

function checkIndex(i: number, len: number, op: string): number {
  if (!(i >= 0 && i < len)) throw new RangeError(`${op}: index ${i} is out of range [0, ${len})`);
  return i;
}

// scatterAdd's counting sort (order, first; slots 0 and 1) and gather's indices (GATHER_IDS), kept from
// call to call in the GEMM engine's memory.
const sortWork = new F32WorkArrays(true);
const GATHER_IDS = 2;
const asInt32 = (a: Float32Array) => new Int32Array(a.buffer, a.byteOffset, a.length);

export function gatherKernel(_b: Backend, [x, idx]: KernelTensor[], { axis }: KernelAttrs['gather']): KernelTensor[] {
  const [outer, len, inner] = splitAt(x!.shape, axis);
  const ids = raw(idx!) as Int32Array;
  const src = raw(x!);
  const size = outer * ids.length * inner;
  const out = x!.dtype === 'f32' ? takeF32(size) : allocStorageArray(x!.dtype, size); // every row written
  const shape = [...x!.shape.slice(0, axis), ...idx!.shape, ...x!.shape.slice(axis + 1)];
  if (inner === 1) {
    // single elements (the MoE's routing weights in dispatch order): a row's subarray + set costs more
    for (let o = 0; o < outer; o++)
      for (let j = 0; j < ids.length; j++) out[o * ids.length + j] = src[o * len + checkIndex(ids[j]!, len, 'gather')]!;
    return [wrap(x!.dtype, shape, out)];
  }
  // rows of f32 along axis 0 in the engine's memory (the MoE's dispatch, an embedding): the engine's
  // row-copy kernel on both threads, the indices staged there (only then: x on the host takes the loop)
  if (
    outer === 1 &&
    ids.length > 0 &&
    out instanceof Float32Array &&
    engineOwning(out) !== null &&
    engineOwning(src) === engineOwning(out) &&
    gatherRowsResident(out, src as Float32Array, residentIds(ids, len), inner)
  )
    return [wrap(x!.dtype, shape, out)];
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < ids.length; j++) {
      const s = (o * len + checkIndex(ids[j]!, len, 'gather')) * inner;
      out.set(src.subarray(s, s + inner), (o * ids.length + j) * inner);
    }
  }
  return [wrap(x!.dtype, shape, out)];
}

/** ids, each checked against len, copied into a work array of the engine's memory (valid until the next call). */
function residentIds(ids: Int32Array, len: number): Int32Array {
  const staged = asInt32(sortWork.take(GATHER_IDS, ids.length));
  for (let j = 0; j < ids.length; j++) staged[j] = checkIndex(ids[j]!, len, 'gather');
  return staged;
}

export function scatterAddKernel(
  _b: Backend,
  [x, idx, src]: KernelTensor[],
  { axis, zeros }: KernelAttrs['scatterAdd'],
): KernelTensor[] {
  const [outer, len, inner] = splitAt(x!.shape, axis);
  const ids = raw(idx!) as Int32Array;
  if ((x!.dtype === 'f32' || x!.dtype === 'f64') && src!.dtype === x!.dtype)
    return [
      wrap(x!.dtype, x!.shape, scatterAddRows(raw(x!) as F, ids, raw(src!) as F, outer, len, inner, zeros === true)),
    ];
  const out = Float64Array.from(num(x!));
  const sv = num(src!);
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < ids.length; j++) {
      const d = (o * len + checkIndex(ids[j]!, len, 'scatterAdd')) * inner;
      const s = (o * ids.length + j) * inner;
      for (let i = 0; i < inner; i++) out[d + i]! += sv[s + i]!;
    }
  }
  return [result(x!.dtype, x!.shape, out)];
}

type F = Float32Array | Float64Array;

/**
 * scatterAdd for f32 / f64 storage without widening all of x (an embedding's gradient is a
 * [vocab, dim] x with a few rows touched): x is copied in its own dtype and only the touched rows are
 * summed, in float64 in index order from x's value and rounded once — the generic kernel's result,
 * bit for bit.
 */
function scatterAddRows(xv: F, ids: Int32Array, sv: F, outer: number, len: number, inner: number, zeros: boolean): F {
  const out = xv instanceof Float32Array ? takeF32(xv.length) : new Float64Array(xv.length);
  // The source rows of each destination row, in index order: a counting sort of the indices (stable),
  // rows of destination d at order[first[d] .. first[d + 1]) — in the engine's memory for the SIMD
  // kernel where it has room.
  const first = asInt32(sortWork.take(0, len + 1));
  first.fill(0);
  for (let j = 0; j < ids.length; j++) {
    const d = checkIndex(ids[j]!, len, 'scatterAdd');
    first[d + 1] = first[d + 1]! + 1;
  }
  for (let d = 0; d < len; d++) first[d + 1] = first[d + 1]! + first[d]!;
  const order = asInt32(sortWork.take(1, ids.length));
  for (let j = 0; j < ids.length; j++) {
    const d = ids[j]!;
    order[first[d]!] = j;
    first[d] = first[d]! + 1;
  }
  for (let d = len; d > 0; d--) first[d] = first[d - 1]!; // back to each row's first entry
  first[0] = 0;
  // x all zeros (a gather's gradient), rows along axis 0, f32 in the engine's memory: the SIMD kernel
  // on both threads, every row written (the untouched ones +0)
  if (zeros && outer === 1 && out instanceof Float32Array && sv instanceof Float32Array)
    if (scatterAddRowsResident(out, sv, order, first, inner)) return out;
  // x all zeros (an embedding's gradient): a recycled output is cleared, x itself never read (its
  // fresh pages are never touched)
  if (zeros) {
    if (out instanceof Float32Array) fillF32(out, 0);
  } else out.set(xv);
  const acc = new Float64Array(inner);
  for (let o = 0; o < outer; o++)
    for (let d = 0; d < len; d++) {
      const [j0, j1] = [first[d]!, first[d + 1]!];
      if (j0 === j1) continue;
      const at = (o * len + d) * inner;
      if (zeros) acc.fill(0);
      else for (let i = 0; i < inner; i++) acc[i] = xv[at + i]!;
      for (let n = j0; n < j1; n++) {
        const s = (o * ids.length + order[n]!) * inner;
        for (let i = 0; i < inner; i++) acc[i]! += sv[s + i]!;
      }
      out.set(acc, at);
    }
  return out;
}

export function takeAlongKernel(
  _b: Backend,
  [x, idx]: KernelTensor[],
  { axis }: KernelAttrs['takeAlong'],
): KernelTensor[] {
  const [outer, len, inner] = splitAt(x!.shape, axis);
  const [, jlen] = splitAt(idx!.shape, axis);
  const ids = raw(idx!) as Int32Array;
  const src = raw(x!);
  const out = allocStorageArray(x!.dtype, ids.length);
  for (let o = 0; o < outer; o++)
    for (let j = 0; j < jlen; j++)
      for (let i = 0; i < inner; i++) {
        const p = (o * jlen + j) * inner + i;
        out[p] = src[(o * len + checkIndex(ids[p]!, len, 'takeAlong')) * inner + i]!;
      }
  return [wrap(x!.dtype, idx!.shape, out)];
}

export function scatterAlongKernel(
  _b: Backend,
  [x, idx, src]: KernelTensor[],
  { axis }: KernelAttrs['scatterAlong'],
): KernelTensor[] {
  const [outer, len, inner] = splitAt(x!.shape, axis);
  const [, jlen] = splitAt(idx!.shape, axis);
  const ids = raw(idx!) as Int32Array;
  const sv = num(src!);
  const out = Float64Array.from(num(x!));
  for (let o = 0; o < outer; o++)
    for (let j = 0; j < jlen; j++)
      for (let i = 0; i < inner; i++) {
        const p = (o * jlen + j) * inner + i;
        out[(o * len + checkIndex(ids[p]!, len, 'scatterAlong')) * inner + i]! += sv[p]!;
      }
  return [result(x!.dtype, x!.shape, out)];
}

export function stridedKernel(
  _b: Backend,
  [x]: KernelTensor[],
  { shape, strides, offset }: KernelAttrs['strided'],
): KernelTensor[] {
  const src = raw(x!);
  // every element is written: an f32 output may come from the free list
  const out = x!.dtype === 'f32' ? takeF32(sizeOf(shape)) : allocStorageArray(x!.dtype, sizeOf(shape));
  const st = [...strides];
  const inner = st.length ? st[st.length - 1]! : 0;
  forEachRow(shape, [st], (offs, o, n) => {
    const base = offset + offs[0]!;
    if (inner === 1) out.set(src.subarray(base, base + n), o);
    else for (let i = 0; i < n; i++) out[o + i] = src[base + i * inner]!;
  });
  return [wrap(x!.dtype, shape, out)];
}

export function padKernel(
  _b: Backend,
  [x]: KernelTensor[],
  { before, after, value }: KernelAttrs['pad'],
): KernelTensor[] {
  const shape = x!.shape.map((d, i) => d + before[i]! + after[i]!);
  const outFloat = new Float64Array(sizeOf(shape)).fill(value);
  const v = num(x!);
  const ostr = stridesOf(shape);
  const start = before.reduce((s, b, d) => s + b * ostr[d]!, 0);
  forEachRow(x!.shape, [ostr], (offs, o, n) => {
    for (let i = 0; i < n; i++) outFloat[start + offs[0]! + i] = v[o + i]!;
  });
  return [result(x!.dtype, shape, outFloat)];
}

export function concatKernel(_b: Backend, xs: KernelTensor[], { axis }: KernelAttrs['concat']): KernelTensor[] {
  const first = xs[0]!;
  const total = xs.reduce((s, t) => s + t.shape[axis]!, 0);
  const shape = first.shape.map((d, i) => (i === axis ? total : d));
  const [outer, , inner] = splitAt(shape, axis);
  const out = allocStorageArray(first.dtype, sizeOf(shape));
  let at = 0;
  for (const t of xs) {
    const src = raw(t);
    const w = t.shape[axis]! * inner;
    for (let o = 0; o < outer; o++) out.set(src.subarray(o * w, (o + 1) * w), o * total * inner + at);
    at += w;
  }
  return [wrap(first.dtype, shape, out)];
}

export function topkKernel(_b: Backend, [x]: KernelTensor[], { k }: KernelAttrs['topk']): KernelTensor[] {
  const n = x!.shape[x!.shape.length - 1]!;
  const v = num(x!);
  const rows = n === 0 ? 0 : v.length / n;
  const vals = floatArray(x!.dtype, rows * k);
  const ids = new Int32Array(rows * k);
  const order = new Int32Array(n);
  // NaN sorts first (largest), so it is never silently dropped; equal values keep index order.
  const key = (e: number): number => (Number.isNaN(e) ? Infinity : e);
  for (let r = 0; r < rows; r++) {
    const base = r * n;
    for (let j = 0; j < n; j++) order[j] = j;
    order.sort((p, q) => key(v[base + q]!) - key(v[base + p]!) || p - q);
    for (let j = 0; j < k; j++) {
      ids[r * k + j] = order[j]!;
      vals[r * k + j] = v[base + order[j]!]!;
    }
  }
  const shape = [...x!.shape.slice(0, -1), k];
  return [result(x!.dtype, shape, vals), wrap('i32', shape, ids)];
}

export function cumsumKernel(
  _b: Backend,
  [x]: KernelTensor[],
  { axis, reverse }: KernelAttrs['cumsum'],
): KernelTensor[] {
  const [outer, len, inner] = splitAt(x!.shape, axis);
  const v = num(x!);
  const out = new Float64Array(v.length);
  for (let o = 0; o < outer; o++)
    for (let i = 0; i < inner; i++) {
      let s = 0;
      for (let jj = 0; jj < len; jj++) {
        const j = reverse ? len - 1 - jj : jj;
        const p = (o * len + j) * inner + i;
        s += v[p]!;
        out[p] = s;
      }
    }
  return [result(x!.dtype, x!.shape, out)];
}

export function fullKernel(
  _b: Backend,
  _in: KernelTensor[],
  { shape, dtype, value }: KernelAttrs['full'],
): KernelTensor[] {
  return [result(dtype, shape, new Float64Array(sizeOf(shape)).fill(value))];
}

export function iotaKernel(
  _b: Backend,
  _in: KernelTensor[],
  { shape, axis, dtype }: KernelAttrs['iota'],
): KernelTensor[] {
  const [outer, len, inner] = splitAt(shape, axis);
  const out = new Float64Array(sizeOf(shape));
  for (let o = 0; o < outer; o++)
    for (let j = 0; j < len; j++) out.fill(j, (o * len + j) * inner, (o * len + j + 1) * inner);
  return [result(dtype, shape, out)];
}
