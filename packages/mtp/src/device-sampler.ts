// Sampling on the device: one op ('mtp.sample', CPU and WGSL kernels) turns logits [B, V] into token
// ids [B] — greedy argmax, or temperature → top-k → top-p and one draw — with per-row settings, so a
// decode step reads back only the ids. Draws come from a counter-based hash of (seed, counter), the
// same in both kernels: the same seed gives the same ids on every backend, and a request's n-th token
// uses counter n, so nothing stateful lives on the device.
// Semantics next to the host sampler (sampler.ts): top-k keeps the logits >= the k-th largest (ties at
// the boundary stay in), top-p the smallest set of largest weights whose mass reaches p (likewise).
import { exec1, tensor, type Backend, type Tensor } from '@dsv3/core';
import { SAMPLE_OP } from './register.js';
import { checkSampling, type SamplingOptions } from './sampler.js';

/** One row's sampling: the host sampler's options plus the draw's seed and counter (u32 each). */
export interface RowSampling extends SamplingOptions {
  seed?: number;
  /** which draw of the seed's stream (e.g. the number of tokens the request has generated) */
  counter?: number;
}

/** Per-row settings on the device: temperature f32 [B], topK i32 [B], topP f32 [B], keys u32 [B, 2] (seed, counter). */
export interface SamplingTensors {
  temperature: Tensor;
  topK: Tensor;
  topP: Tensor;
  keys: Tensor;
}

const isU32 = (x: number): boolean => Number.isInteger(x) && x >= 0 && x <= 0xffffffff;

/** Uploads per-row settings (checked like the host sampler's; temperature 0 = greedy). */
export function samplingTensors(rows: readonly RowSampling[], backend?: Backend): SamplingTensors {
  if (!rows.length) throw new RangeError('samplingTensors: no rows');
  const B = rows.length;
  const temperature = new Float32Array(B);
  const topK = new Int32Array(B);
  const topP = new Float32Array(B);
  const keys = new Uint32Array(2 * B);
  rows.forEach((r, i) => {
    checkSampling(r);
    for (const [name, v] of [
      ['seed', r.seed ?? 0],
      ['counter', r.counter ?? 0],
    ] as const)
      if (!isU32(v))
        throw new RangeError(`samplingTensors: row ${i}: ${name} must be an integer in [0, 2^32), got ${v}`);
    if ((r.topK ?? 0) > 0x7fffffff) throw new RangeError(`samplingTensors: row ${i}: topK ${r.topK} is too large`);
    temperature[i] = r.temperature ?? 1;
    topK[i] = r.topK ?? 0;
    topP[i] = r.topP ?? 1;
    keys[2 * i] = r.seed ?? 0;
    keys[2 * i + 1] = r.counter ?? 0;
  });
  return {
    temperature: tensor(temperature, { shape: [B], dtype: 'f32', backend }),
    topK: tensor(topK, { shape: [B], dtype: 'i32', backend }),
    topP: tensor(topP, { shape: [B], dtype: 'f32', backend }),
    keys: tensor(keys, { shape: [B, 2], dtype: 'u32', backend }),
  };
}

/**
 * Token ids i32 [B] drawn from logits [B, V] (or [B, 1, V]) with per-row settings, on the logits'
 * backend. A row whose logits hold no finite value gets -1 when sampled (greedy takes index 0, as the
 * host argmax does); readTokens() turns that into an error.
 */
export function sampleTokens(logits: Tensor, params: SamplingTensors): Tensor {
  const V = logits.shape[logits.ndim - 1]!;
  const B = logits.size / Math.max(V, 1);
  if (logits.ndim < 2 || logits.shape.slice(1, -1).some((d) => d !== 1) || V === 0)
    throw new RangeError(`sampleTokens: logits must be [B, V] or [B, 1, V], got [${logits.shape.join(', ')}]`);
  if (logits.dtype !== 'f32') throw new TypeError(`sampleTokens: logits must be f32, got ${logits.dtype}`);
  for (const [name, t, dtype, size] of [
    ['temperature', params.temperature, 'f32', B],
    ['topK', params.topK, 'i32', B],
    ['topP', params.topP, 'f32', B],
    ['keys', params.keys, 'u32', 2 * B],
  ] as const) {
    if (t.dtype !== dtype || t.size !== size)
      throw new RangeError(
        `sampleTokens: ${name} must be ${dtype} with ${size} values (B = ${B}), got ${t.dtype} [${t.shape.join(', ')}]`,
      );
    if (t.backend !== logits.backend)
      throw new Error(`sampleTokens: ${name} is on ${t.backend.name} but the logits on ${logits.backend.name}`);
  }
  const rows = logits.ndim === 2 ? logits : logits.reshape([B, V]);
  try {
    return exec1(SAMPLE_OP, [rows, params.temperature, params.topK, params.topP, params.keys], {});
  } finally {
    // the view, not the logits: a caller that disposes its logits then frees their storage
    if (rows !== logits) rows.dispose();
  }
}

/** Reads sampled ids back (the one read of a decode step), failing on rows that had nothing to sample. */
export async function readTokens(ids: Tensor): Promise<number[]> {
  const out = Array.from((await ids.data()) as Int32Array);
  const bad = out.findIndex((t) => t < 0);
  if (bad >= 0) throw new RangeError(`sampleTokens: row ${bad} has no finite logit to sample from`);
  return out;
}
