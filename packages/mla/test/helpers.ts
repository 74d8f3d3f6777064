// Test helpers: seeded random data, relative L2 error, a float64 finite-difference gradient check,
// a float64 reference of MLA in plain JS loops, and a tiny safetensors reader.
import { readFileSync } from 'node:fs';
import { expect } from 'vitest';
import { mul, noGrad, Rng, sum, tensor, type DType, type Tensor } from '@dsv3/core';
import type { MLA } from '../src/index.js';

export function randArray(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  const rng = new Rng(seed);
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * rng.uniform();
  return a;
}

export function randT(shape: number[], seed: number, dtype: DType = 'f32', lo = -1, hi = 1): Tensor {
  return tensor(randArray(shape.reduce((a, b) => a * b, 1), seed, lo, hi), { shape, dtype });
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
 * Compares d/dx of sum(f(xs) * W) (W fixed random) from autograd with central differences in f64,
 * on up to `maxElems` evenly spread elements of each input in `wrt`.
 */
export function gradcheck(name: string, f: (...xs: Tensor[]) => Tensor, inputs: Tensor[], opts: { h?: number; tol?: number; maxElems?: number; wrt?: number[] } = {}): number {
  const h = opts.h ?? 1e-6;
  const tol = opts.tol ?? 1e-6;
  const wrt = opts.wrt ?? inputs.map((_, i) => i);
  const leaves = inputs.map((t, i) => (wrt.includes(i) ? t.detach().requireGrad() : t));
  const out = f(...leaves);
  const w = tensor(randArray(out.size, 777, 0.5, 1.5), { shape: [...out.shape], dtype: out.dtype });
  sum(mul(out, w)).backward();
  const loss = (xs: Tensor[]): number => noGrad(() => sum(mul(f(...xs), w)).dataSync()[0]!);
  let worst = 0;
  for (const i of wrt) {
    const base = inputs[i]!.dataSync() as Float64Array;
    const analytic = leaves[i]!.grad?.dataSync();
    expect(analytic, `${name}: no gradient reached input ${i}`).toBeDefined();
    const step = Math.max(1, Math.floor(base.length / (opts.maxElems ?? 48)));
    const num: number[] = [];
    const ana: number[] = [];
    for (let e = 0; e < base.length; e += step) {
      const at = (d: number): number => {
        const p = Float64Array.from(base);
        p[e]! += d;
        return loss(inputs.map((t, k) => (k === i ? tensor(p, { shape: [...t.shape], dtype: 'f64' }) : t)));
      };
      num.push((at(h) - at(-h)) / (2 * h));
      ana.push(analytic![e]!);
    }
    const err = relErr(ana, num);
    worst = Math.max(worst, err);
    expect(err, `${name}: gradient of input ${i} vs finite differences (rel ${err})`).toBeLessThan(tol);
  }
  return worst;
}

/**
 * Float64 reference of latent attention in plain loops: for each batch row b, query s, head h:
 * softmax_j((qL·ckv_j + qR·kr_j)·scale, j <= offset_b + s, j < T_b) · ckv_j.
 * qL [B,S,H,C], qR [B,S,H,R]; ckv/kr: per row arrays [T_b, C] / [T_b, R].
 */
export function refLatentAttention(qL: ArrayLike<number>, qR: ArrayLike<number>, ckv: ArrayLike<number>[], kr: ArrayLike<number>[], B: number, S: number, H: number, C: number, R: number, scale: number, offsets: number[]): Float64Array {
  const out = new Float64Array(B * S * H * C);
  for (let b = 0; b < B; b++) {
    const T = ckv[b]!.length / C;
    for (let s = 0; s < S; s++) {
      for (let h = 0; h < H; h++) {
        const qo = ((b * S + s) * H + h) * C;
        const qro = ((b * S + s) * H + h) * R;
        const lim = Math.min(T - 1, offsets[b]! + s);
        const sc = new Float64Array(lim + 1);
        let mx = -Infinity;
        for (let j = 0; j <= lim; j++) {
          let d = 0;
          for (let c = 0; c < C; c++) d += qL[qo + c]! * ckv[b]![j * C + c]!;
          for (let i = 0; i < R; i++) d += qR[qro + i]! * kr[b]![j * R + i]!;
          sc[j] = d * scale;
          mx = Math.max(mx, sc[j]!);
        }
        let z = 0;
        for (let j = 0; j <= lim; j++) z += sc[j] = Math.exp(sc[j]! - mx);
        for (let j = 0; j <= lim; j++) {
          const p = sc[j]! / z;
          for (let c = 0; c < C; c++) out[qo + c]! += p * ckv[b]![j * C + c]!;
        }
      }
    }
  }
  return out;
}

export interface StTensor {
  dtype: string;
  shape: number[];
  data: Float32Array | Float64Array | Int32Array;
}

/** Minimal safetensors reader (F32, F64, I32, I64→I32) for the committed fixtures. */
export function readSt(path: string): { tensors: Record<string, StTensor>; metadata: Record<string, string> } {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
  const base = 8 + n;
  const tensors: Record<string, StTensor> = {};
  let metadata: Record<string, string> = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = info as Record<string, string>;
      continue;
    }
    const t = info as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const bytes = buf.subarray(base + t.data_offsets[0], base + t.data_offsets[1]);
    const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    let data: Float32Array | Float64Array | Int32Array;
    if (t.dtype === 'F32') data = new Float32Array(ab);
    else if (t.dtype === 'F64') data = new Float64Array(ab);
    else if (t.dtype === 'I32') data = new Int32Array(ab);
    else if (t.dtype === 'I64') data = Int32Array.from(new BigInt64Array(ab), (v) => Number(v));
    else throw new Error(`readSt: unsupported dtype ${t.dtype} for ${name}`);
    tensors[name] = { dtype: t.dtype, shape: t.shape, data };
  }
  return { tensors, metadata };
}

/** Random weights for every parameter (norm weights in [0.5, 1.5], projections ~ U(±sqrt(3/fan_in))). */
export function randomize(m: MLA, seed: number, dtype: DType = 'f32'): void {
  const state: Record<string, Tensor> = {};
  let k = 0;
  for (const [name, p] of m.namedParameters()) {
    const n = p.value.size;
    const isNorm = name.endsWith('layernorm.weight');
    const fan = p.value.shape[1] ?? 1;
    const a = isNorm ? randArray(n, seed + k, 0.5, 1.5) : randArray(n, seed + k, -1, 1).map((v) => (v * Math.sqrt(3)) / Math.sqrt(fan));
    state[name] = tensor(a, { shape: [...p.value.shape], dtype });
    k++;
  }
  m.loadStateDict(state);
}
