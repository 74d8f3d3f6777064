// Test helpers: seeded random data, relative L2 error, a float64 finite-difference gradient check,
// a float64 reference of MLA in plain JS loops, and a tiny safetensors reader.
import { readFileSync } from 'node:fs';
import { expect } from 'vitest';
import { tensor, type DType, type Tensor } from '@dsv3/core';
import {
  finiteDifferenceCheck,
  randomUniform as randArray,
  relativeError as relErr,
  type GradCheckOptions,
} from '@dsv3/core/testing';
import type { MLA } from '../src/index.js';

export { randArray, relErr };

/** Asserts autograd's gradients match central differences in f64 (default tol 1e-6); returns the worst error. */
export function gradcheck(
  name: string,
  f: (...xs: Tensor[]) => Tensor,
  inputs: Tensor[],
  opts: GradCheckOptions & { tol?: number } = {},
): number {
  let worst = 0;
  finiteDifferenceCheck(f, inputs, { maxElems: 48, ...opts }).forEach((err, i) => {
    if (err === undefined) return;
    worst = Math.max(worst, err);
    expect(err, `${name}: gradient of input ${i} vs finite differences (rel ${err})`).toBeLessThan(opts.tol ?? 1e-6);
  });
  return worst;
}

export function randT(shape: number[], seed: number, dtype: DType = 'f32', lo = -1, hi = 1): Tensor {
  return tensor(
    randArray(
      shape.reduce((a, b) => a * b, 1),
      seed,
      lo,
      hi,
    ),
    { shape, dtype },
  );
}

/**
 * Float64 reference of latent attention in plain loops: for each batch row b, query s, head h:
 * softmax_j((qL·ckv_j + qR·kr_j)·scale, j <= offset_b + s, j < T_b) · ckv_j.
 * qL [B,S,H,C], qR [B,S,H,R]; ckv/kr: per row arrays [T_b, C] / [T_b, R].
 */
/** The inputs of refLatentAttention: queries [B, S, H, C|R] flat, each sequence's latents, sizes, scale, causal offsets. */
export interface RefAttentionCase {
  qL: ArrayLike<number>;
  qR: ArrayLike<number>;
  ckv: ArrayLike<number>[];
  kr: ArrayLike<number>[];
  B: number;
  S: number;
  H: number;
  C: number;
  R: number;
  scale: number;
  offsets: number[];
}

export function refLatentAttention({ qL, qR, ckv, kr, B, S, H, C, R, scale, offsets }: RefAttentionCase): Float64Array {
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
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>
  >;
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
    const a = isNorm
      ? randArray(n, seed + k, 0.5, 1.5)
      : randArray(n, seed + k, -1, 1).map((v) => (v * Math.sqrt(3)) / Math.sqrt(fan));
    state[name] = tensor(a, { shape: [...p.value.shape], dtype });
    k++;
  }
  m.loadStateDict(state);
}
