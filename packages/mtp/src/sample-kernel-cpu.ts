// The CPU kernel of 'mtp.sample' (device-sampler.ts): per row, greedy argmax or temperature → top-k →
// top-p → one draw from a counter-based hash. Every step is the WGSL kernel's (sample-kernel-webgpu.ts)
// in the same f32 arithmetic and the same summation order (256 chunks of the row, then the chunk sums in
// order), so both backends draw the same ids for the same seed.
import { CpuStorage, firstMaxIndexF32, type Backend, type KernelTensor } from '@dsv3/core';

/** Fewest values of a row rowMax hands to the SIMD pass (below it the loop costs less than the staging). */
const SIMD_MIN_ROW = 1024;

/** Threads of the WGSL kernel; the CPU splits a row into as many chunks. */
export const SAMPLE_LANES = 256;

export const f = Math.fround;
const u32 = new Uint32Array(1);
const f32 = new Float32Array(u32.buffer);

/** An order-preserving u32 key of an f32 (larger float, larger key). */
export function orderKey(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  return (b & 0x80000000 ? ~b : b | 0x80000000) >>> 0;
}

/** lowbias32 (a 32-bit integer hash with good avalanche). */
function mix(x0: number): number {
  let x = x0 >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  x ^= x >>> 16;
  return x >>> 0;
}

/** The uniform draw in [0, 1) (24 bits) of (seed, counter); the WGSL kernel computes the same. */
export function uniformOf(seed: number, counter: number): number {
  const h = mix(mix((counter + 0x9e3779b9) >>> 0) ^ (seed >>> 0));
  return (h >>> 8) / 16777216;
}

/** A CPU kernel input's values. */
export function kernelData(t: KernelTensor): ArrayLike<number> {
  if (!(t.storage instanceof CpuStorage)) throw new Error('mtp kernels on the cpu: a tensor lives on another backend');
  return t.storage.data as ArrayLike<number>;
}

/** Scratch of the row computations: weights, keys and chunk sums of rows of V values. */
export class RowScratch {
  readonly w: Float32Array;
  readonly key: Uint32Array;
  readonly part = new Float32Array(SAMPLE_LANES);
  /** values per chunk (lane) */
  readonly per: number;
  readonly chunks: number;
  constructor(readonly V: number) {
    this.w = new Float32Array(V);
    this.key = new Uint32Array(V);
    this.per = Math.ceil(V / SAMPLE_LANES);
    this.chunks = Math.ceil(V / this.per);
  }
  /** f32 sum of w where key >= t, chunk by chunk then over the chunk sums in order (left in part). */
  mass(t: number): number {
    const { w, key, part, per, chunks, V } = this;
    part.fill(0);
    for (let c = 0; c < chunks; c++) {
      let s = 0;
      for (let i = c * per; i < Math.min(V, (c + 1) * per); i++) if (key[i]! >= t) s = f(s + w[i]!);
      part[c] = s;
    }
    let z = 0;
    for (let c = 0; c < SAMPLE_LANES; c++) z = f(z + part[c]!);
    return z;
  }
}

/**
 * The first maximum of the row values[start, start + V) (NaN never wins) and its index in the row (-1
 * when no value is finite or +inf): the greedy step's whole cost at V = 129,280. An f32 row of
 * SIMD_MIN_ROW values or more goes to core's firstMaxIndexF32 (WebAssembly SIMD where the runtime has it,
 * the same index: ~40 µs where this loop took ~130–240), others to the loop (a plain one: a per-element
 * accessor call cost several times it).
 */
export function rowMax(values: ArrayLike<number>, start: number, V: number): { best: number; at: number } {
  if (V >= SIMD_MIN_ROW && values instanceof Float32Array) {
    const at = firstMaxIndexF32(values, start, V);
    return { best: at < 0 ? -Infinity : values[start + at]!, at };
  }
  let best = -Infinity;
  let at = -1;
  for (let i = 0; i < V; i++) {
    const v = values[start + i]!;
    if (v > best) {
      best = v;
      at = i;
    }
  }
  return { best, at };
}

/**
 * The sampling weights of a row into s.w (temperature T > 0 → top-k → top-p, unnormalised: exp((x −
 * max) / T), zero outside the kept set) and their f32 sum z (chunk sums left in s.part).
 */
export function rowWeights(
  row: (i: number) => number,
  best: number,
  T: number,
  k: number,
  p: number,
  s: RowScratch,
): number {
  const { w, key, V } = s;
  for (let i = 0; i < V; i++) key[i] = orderKey(row(i));
  const above = (t: number): number => {
    let n = 0;
    for (let i = 0; i < V; i++) if (key[i]! >= t) n++;
    return n;
  };
  let cut = 0;
  if (k > 0 && k < V)
    for (let bit = 31; bit >= 0; bit--) if (above((cut | (1 << bit)) >>> 0) >= k) cut = (cut | (1 << bit)) >>> 0;
  for (let i = 0; i < V; i++) w[i] = key[i]! >= cut && row(i) === row(i) ? f(Math.exp(f(f(row(i) - best) / T))) : 0;
  let z = s.mass(0);
  if (p < 1) {
    const target = f(p * z);
    let cut2 = 0;
    for (let bit = 31; bit >= 0; bit--)
      if (s.mass((cut2 | (1 << bit)) >>> 0) >= target) cut2 = (cut2 | (1 << bit)) >>> 0;
    for (let i = 0; i < V; i++) if (key[i]! < cut2) w[i] = 0;
    z = s.mass(0);
  }
  return z;
}

/** One draw from the weights in s.w (chunk sums in s.part, total z) with the uniform of (seed, counter). */
export function drawFrom(s: RowScratch, z: number, seed: number, counter: number): number {
  return drawIndex(s.w, s.part, s.per, s.V, f(f(uniformOf(seed, counter)) * z));
}

/** inputs [logits f32 [B, V], temperature f32 [B], topK i32 [B], topP f32 [B], keys u32 [B, 2]] → ids i32 [B] */
export function sampleCpu(_b: Backend, inputs: KernelTensor[]): KernelTensor[] {
  const [lt, tt, kt, pt, st] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  const [B, V] = lt.shape as [number, number];
  const logits = kernelData(lt);
  const temp = kernelData(tt);
  const topK = kernelData(kt);
  const topP = kernelData(pt);
  const keys = kernelData(st);
  const out = new Int32Array(B);
  // Made on the first sampled row: a greedy step (decode's usual one) needs no 2·V-value scratch.
  let s: RowScratch | null = null;
  for (let b = 0; b < B; b++) {
    const row = (i: number): number => logits[b * V + i]!;
    const { best, at } = rowMax(logits, b * V, V);
    const T = temp[b]!;
    if (!(T > 0) || at < 0) {
      out[b] = at < 0 && T > 0 ? -1 : Math.max(at, 0);
      continue;
    }
    s ??= new RowScratch(V);
    const z = rowWeights(row, best, T, topK[b]!, topP[b]!, s);
    out[b] = drawFrom(s, z, keys[2 * b]!, keys[2 * b + 1]!);
  }
  return [{ storage: new CpuStorage(out), shape: [B], dtype: 'i32' }];
}

/** The index where the running f32 sum (chunk sums first, then within the chunk) passes `target`. */
export function drawIndex(w: Float32Array, part: Float32Array, per: number, V: number, target: number): number {
  let acc = 0;
  let last = -1;
  for (let c = 0; c < SAMPLE_LANES; c++) {
    const next = f(acc + part[c]!);
    if (part[c]! > 0) last = c;
    if (next > target && part[c]! > 0) {
      for (let i = c * per; i < Math.min(V, (c + 1) * per); i++) {
        acc = f(acc + w[i]!);
        if (w[i]! > 0 && acc > target) return i;
      }
      return lastPositive(w, c, per, V);
    }
    acc = next;
  }
  return lastPositive(w, last, per, V);
}

function lastPositive(w: Float32Array, chunk: number, per: number, V: number): number {
  for (let i = Math.min(V, (chunk + 1) * per) - 1; i >= chunk * per; i--) if (w[i]! > 0) return i;
  return -1;
}
