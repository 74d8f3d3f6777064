// The CPU kernel of 'mtp.sample' (device-sampler.ts): per row, greedy argmax or temperature → top-k →
// top-p → one draw from a counter-based hash. Every step is the WGSL kernel's (sample-kernel-webgpu.ts)
// in the same f32 arithmetic and the same summation order (256 chunks of the row, then the chunk sums in
// order), so both backends draw the same ids for the same seed.
import { CpuStorage, type Backend, type KernelTensor } from '@dsv3/core';

/** Threads of the WGSL kernel; the CPU splits a row into as many chunks. */
export const SAMPLE_LANES = 256;

const f = Math.fround;
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

function data(t: KernelTensor): ArrayLike<number> {
  if (!(t.storage instanceof CpuStorage)) throw new Error('mtp.sample on the cpu: a tensor lives on another backend');
  return t.storage.data as ArrayLike<number>;
}

/** inputs [logits f32 [B, V], temperature f32 [B], topK i32 [B], topP f32 [B], keys u32 [B, 2]] → ids i32 [B] */
export function sampleCpu(_b: Backend, inputs: KernelTensor[]): KernelTensor[] {
  const [lt, tt, kt, pt, st] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  const [B, V] = lt.shape as [number, number];
  const logits = data(lt);
  const temp = data(tt);
  const topK = data(kt);
  const topP = data(pt);
  const keys = data(st);
  const out = new Int32Array(B);
  const w = new Float32Array(V);
  const key = new Uint32Array(V);
  const per = Math.ceil(V / SAMPLE_LANES);
  const chunks = Math.ceil(V / per);
  const part = new Float32Array(SAMPLE_LANES);
  for (let b = 0; b < B; b++) {
    const row = (i: number): number => logits[b * V + i]!;
    // first maximum (NaN never wins), as the WGSL per-chunk scan then the in-order merge finds it
    let best = -Infinity;
    let at = -1;
    for (let i = 0; i < V; i++) if (row(i) > best) [best, at] = [row(i), i];
    const T = temp[b]!;
    if (!(T > 0) || at < 0) {
      out[b] = at < 0 && T > 0 ? -1 : Math.max(at, 0);
      continue;
    }
    for (let i = 0; i < V; i++) key[i] = orderKey(row(i));
    const above = (t: number): number => {
      let n = 0;
      for (let i = 0; i < V; i++) if (key[i]! >= t) n++;
      return n;
    };
    const k = topK[b]!;
    let cut = 0;
    if (k > 0 && k < V)
      for (let bit = 31; bit >= 0; bit--) if (above((cut | (1 << bit)) >>> 0) >= k) cut = (cut | (1 << bit)) >>> 0;
    for (let i = 0; i < V; i++) w[i] = key[i]! >= cut && row(i) === row(i) ? f(Math.exp(f(f(row(i) - best) / T))) : 0;
    const mass = (t: number): number => {
      part.fill(0);
      for (let c = 0; c < chunks; c++) {
        let s = 0;
        for (let i = c * per; i < Math.min(V, (c + 1) * per); i++) if (key[i]! >= t) s = f(s + w[i]!);
        part[c] = s;
      }
      let z = 0;
      for (let c = 0; c < SAMPLE_LANES; c++) z = f(z + part[c]!);
      return z;
    };
    let z = mass(0);
    const p = topP[b]!;
    if (p < 1) {
      const target = f(p * z);
      let cut2 = 0;
      for (let bit = 31; bit >= 0; bit--)
        if (mass((cut2 | (1 << bit)) >>> 0) >= target) cut2 = (cut2 | (1 << bit)) >>> 0;
      for (let i = 0; i < V; i++) if (key[i]! < cut2) w[i] = 0;
      z = mass(0);
    }
    const target = f(f(uniformOf(keys[2 * b]!, keys[2 * b + 1]!)) * z);
    out[b] = drawIndex(w, part, per, V, target);
  }
  return [{ storage: new CpuStorage(out), shape: [B], dtype: 'i32' }];
}

/** The index where the running f32 sum (chunk sums first, then within the chunk) passes `target`. */
function drawIndex(w: Float32Array, part: Float32Array, per: number, V: number, target: number): number {
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
