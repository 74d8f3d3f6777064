// RoPE with YaRN, as DeepSeek's `precompute_freqs_cis` (and HF's `_compute_yarn_parameters`) compute
// it, plus the softmax scale with the YaRN mscale correction, and RoPE applied to tensors.
import {
  add,
  concat,
  hasFusedKernel,
  indexSelect,
  mul,
  narrow,
  reshape,
  rotaryEmbedding,
  sub,
  tensor,
  type Backend,
  type DType,
  type Tensor,
} from '@dsv3/core';
import type { MLAConfig } from './config.js';

export interface RopeParams {
  /** rotary width d_R (even) */
  dim: number;
  /** per-pair inverse frequency f'_i, i < d/2, rounded to f32 as torch stores it */
  invFreq: Float64Array;
  /** the same in float64 before rounding (for oracles) */
  invFreqExact: Float64Array;
  /** true when YaRN rescaled the frequencies (ropeScaling set and maxPositionEmbeddings > original) */
  yarn: boolean;
  /** YaRN correction range (pair indices), when yarn */
  low: number;
  high: number;
  /** multiplier on cos/sin (HF's `attention_scaling`; 1 for every published DeepSeek config) */
  attentionFactor: number;
  /** 1/sqrt(nope + rope), times m(factor, mscaleAllDim)² under YaRN */
  softmaxScale: number;
  interleave: boolean;
  maxPositions: number;
}

/** YaRN's attention temperature m(scale, a) = 0.1·a·ln(scale) + 1 (1 when scale ≤ 1). */
export function yarnMscale(scale: number, a = 1): number {
  return scale <= 1 ? 1 : 0.1 * a * Math.log(scale) + 1;
}

/**
 * Rotary frequencies, YaRN correction and the softmax scale for an MLA config:
 * f_i = base^(-2i/d); with YaRN (max positions > original L):
 * corr(r) = d·ln(L/(2πr)) / (2 ln base), low = max(floor(corr(β_fast)), 0),
 * high = min(ceil(corr(β_slow)), d-1), ramp_i = clamp((i-low)/(high-low), 0, 1) (high += 0.001 when
 * equal), f'_i = f_i/factor·ramp_i + f_i·(1-ramp_i): the fast-rotating pairs (i < low) keep f_i,
 * the slow ones (i > high) are interpolated by 1/factor.
 */
export function ropeParams(config: MLAConfig): RopeParams {
  const d = config.qkRopeHeadDim;
  const half = d / 2;
  const base = config.ropeTheta;
  const exact = new Float64Array(half);
  for (let i = 0; i < half; i++) exact[i] = base ** (-(2 * i) / d);
  let scale = 1 / Math.sqrt(config.qkNopeHeadDim + config.qkRopeHeadDim);
  let attentionFactor = 1;
  let low = 0;
  let high = 0;
  const s = config.ropeScaling;
  const yarn = !!s && config.maxPositionEmbeddings > s.originalMaxPositionEmbeddings;
  if (s && yarn) {
    const L = s.originalMaxPositionEmbeddings;
    const corr = (rot: number): number => (d * Math.log(L / (rot * 2 * Math.PI))) / (2 * Math.log(base));
    low = Math.max(Math.floor(corr(s.betaFast ?? 32)), 0);
    high = Math.min(Math.ceil(corr(s.betaSlow ?? 1)), d - 1) + 0; // + 0: no -0
    const hi = low === high ? high + 0.001 : high;
    for (let i = 0; i < half; i++) {
      const ramp = Math.min(Math.max((i - low) / (hi - low), 0), 1);
      const f = exact[i]!;
      exact[i] = (f / s.factor) * ramp + f * (1 - ramp);
    }
    const mAll = s.mscaleAllDim;
    if (mAll) scale *= yarnMscale(s.factor, mAll) ** 2;
    attentionFactor =
      s.mscale && mAll ? yarnMscale(s.factor, s.mscale) / yarnMscale(s.factor, mAll) : yarnMscale(s.factor, 1);
  }
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) invFreq[i] = Math.fround(exact[i]!);
  return {
    dim: d,
    invFreq,
    invFreqExact: exact,
    yarn,
    low,
    high,
    attentionFactor,
    softmaxScale: scale,
    interleave: config.ropeInterleave ?? true,
    maxPositions: config.maxPositionEmbeddings,
  };
}

/**
 * cos/sin of position·f'_i for each position (angles rounded to f32 like torch's f32 outer product),
 * times the attention factor: two arrays [positions.length, d/2].
 */
export function ropeCosSin(p: RopeParams, positions: ArrayLike<number>): { cos: Float64Array; sin: Float64Array } {
  const half = p.dim / 2;
  const cos = new Float64Array(positions.length * half);
  const sin = new Float64Array(positions.length * half);
  for (let t = 0; t < positions.length; t++) {
    const pos = positions[t]!;
    for (let i = 0; i < half; i++) {
      const a = Math.fround(pos * p.invFreq[i]!);
      cos[t * half + i] = Math.cos(a) * p.attentionFactor;
      sin[t * half + i] = Math.sin(a) * p.attentionFactor;
    }
  }
  return { cos, sin };
}

/** Checks positions are integers in [0, maxPositionEmbeddings). */
export function checkPositions(p: RopeParams, positions: ArrayLike<number>): void {
  for (let i = 0; i < positions.length; i++) {
    const v = positions[i]!;
    if (!Number.isInteger(v) || v < 0)
      throw new RangeError(`MLA: position ${v} (index ${i}) must be a non-negative integer`);
    if (v >= p.maxPositions)
      throw new RangeError(
        `MLA: position ${v} is beyond maxPositionEmbeddings (${p.maxPositions}); the sequence is too long for this config`,
      );
  }
}

/**
 * Rotates the last axis of x [B, S, H, d] (H may be 1) by the angles of `cos`/`sin`, given as
 * tensors [Bc, S, d/2] with Bc = B or 1. Interleaved: pairs (x_2i, x_2i+1); otherwise (x_i, x_i+d/2).
 * One fused op where the backend has a rope kernel (the CPU); elsewhere composed from core ops.
 */
export function applyRope(x: Tensor, cos: Tensor, sin: Tensor, interleave = true): Tensor {
  if (x.ndim !== 4) throw new Error(`applyRope: x must be [B, S, H, d], got [${x.shape.join(', ')}]`);
  const [B, S, H, d] = x.shape as [number, number, number, number];
  const half = d / 2;
  if (d % 2 !== 0) throw new Error(`applyRope: the rotary width must be even, got ${d}`);
  const bc = cos.shape[0]!;
  if (cos.ndim !== 3 || (bc !== B && bc !== 1) || cos.shape[1] !== S || cos.shape[2] !== half) {
    throw new Error(`applyRope: cos/sin must be [${B} or 1, ${S}, ${half}], got [${cos.shape.join(', ')}]`);
  }
  if (!cos.requiresGrad && !sin.requiresGrad && hasFusedKernel('rope', x))
    return rotaryEmbedding(x, cos, sin, interleave);
  if (interleave) {
    const xr = reshape(x, [B, S, H, half, 2]);
    const x0 = narrow(xr, -1, 0, 1);
    const x1 = narrow(xr, -1, 1, 1);
    const c = reshape(cos, [bc, S, 1, half, 1]);
    const s = reshape(sin, [bc, S, 1, half, 1]);
    const y0 = sub(mul(x0, c), mul(x1, s));
    const y1 = add(mul(x1, c), mul(x0, s));
    return reshape(concat([y0, y1], -1), [B, S, H, d]);
  }
  const x0 = narrow(x, -1, 0, half);
  const x1 = narrow(x, -1, half, half);
  const c = reshape(cos, [bc, S, 1, half]);
  const s = reshape(sin, [bc, S, 1, half]);
  return concat([sub(mul(x0, c), mul(x1, s)), add(mul(x1, c), mul(x0, s))], -1);
}

// ropeCosSin's rows for positions [0, covered), one table per set of rotary parameters (equal
// parameters share it: every layer of a model), grown by doubling as higher positions are asked for.
// A forward's cos / sin are rows copied out of it, instead of 2·S·d/2 cos and sin recomputed by every
// layer (issue 13, nineteenth session). Its rows are ropeCosSin's values exactly (same formula per
// position), so the tensors made of them are too.
interface HostTable {
  cos: Float64Array;
  sin: Float64Array;
  covered: number;
}
const hostTables = new Map<string, HostTable>();
const tableKeys = new WeakMap<RopeParams, string>();

/** The rotary parameters' values as a key (equal parameters, one key), made once per RopeParams object. */
function tableKey(p: RopeParams): string {
  let key = tableKeys.get(p);
  if (key === undefined) {
    key = `${p.dim}:${p.attentionFactor}:${Array.from(p.invFreq).join(',')}`;
    tableKeys.set(p, key);
  }
  return key;
}

function hostTable(p: RopeParams, upTo: number): HostTable {
  const key = tableKey(p);
  let t = hostTables.get(key);
  if (!t || t.covered < upTo) {
    const covered = Math.max(upTo, Math.min(2 * (t?.covered ?? 0), p.maxPositions));
    const all = new Int32Array(covered);
    for (let i = 0; i < covered; i++) all[i] = i;
    t = { ...ropeCosSin(p, all), covered };
    hostTables.set(key, t);
  }
  return t;
}

/**
 * ropeCosSin(p, positions), its rows copied from the shared table of p's rotary parameters; positions
 * must be integers in [0, maxPositionEmbeddings) (RangeError otherwise, as checkPositions).
 */
export function ropeCosSinRows(p: RopeParams, positions: ArrayLike<number>): { cos: Float64Array; sin: Float64Array } {
  checkPositions(p, positions);
  let top = 0;
  for (let i = 0; i < positions.length; i++) top = Math.max(top, positions[i]! + 1);
  const half = p.dim / 2;
  const t = hostTable(p, top);
  const cos = new Float64Array(positions.length * half);
  const sin = new Float64Array(positions.length * half);
  for (let r = 0; r < positions.length; r++) {
    const from = positions[r]! * half;
    cos.set(t.cos.subarray(from, from + half), r * half);
    sin.set(t.sin.subarray(from, from + half), r * half);
  }
  return { cos, sin };
}

/** cos/sin tensors [rows, S, d/2] for positions laid out [rows, S] (in [0, maxPositionEmbeddings)). */
export function ropeTensors(
  p: RopeParams,
  positions: ArrayLike<number>,
  rows: number,
  dtype: DType,
  backend: Backend,
): { cos: Tensor; sin: Tensor } {
  const S = positions.length / rows;
  const { cos, sin } = ropeCosSinRows(p, positions);
  const shape = [rows, S, p.dim / 2];
  return { cos: tensor(cos, { shape, dtype, backend }), sin: tensor(sin, { shape, dtype, backend }) };
}

// The cos/sin tensors of the last run of consecutive positions asked for, per backend and rotary
// parameters and dtype: every layer of a forward from startPos asks for the same ones (a 512-token
// prefill's 8 layers rebuilt them, ~2 ms). Nobody writes or disposes them (tensors are values).
const lastRanges = new WeakMap<Backend, Map<string, { start: number; S: number; cos: Tensor; sin: Tensor }>>();

/** ropeTensors of positions start..start+S-1 ([1, S, d/2]), the last such pair reused when asked again. */
export function ropeTensorsFrom(
  p: RopeParams,
  start: number,
  S: number,
  dtype: DType,
  backend: Backend,
): { cos: Tensor; sin: Tensor } {
  let byKey = lastRanges.get(backend);
  if (!byKey) lastRanges.set(backend, (byKey = new Map()));
  const key = `${dtype}:${p.maxPositions}:${tableKey(p)}`; // the maximum: a hit passed its check
  const last = byKey.get(key);
  if (last && last.start === start && last.S === S) return { cos: last.cos, sin: last.sin };
  const pos = new Int32Array(S);
  for (let s = 0; s < S; s++) pos[s] = start + s;
  const t = ropeTensors(p, pos, 1, dtype, backend);
  byKey.set(key, { start, S, ...t });
  return t;
}

// cos/sin of every position up to maxPositionEmbeddings, per backend and dtype, built once and shared by
// every layer with the same rotary parameters: a positions tensor selects its rows on the device.
const tables = new WeakMap<Backend, Map<string, { cos: Tensor; sin: Tensor }>>();

function ropeTable(p: RopeParams, dtype: DType, backend: Backend): { cos: Tensor; sin: Tensor } {
  let byKey = tables.get(backend);
  if (!byKey) tables.set(backend, (byKey = new Map()));
  const key = `${dtype}:${p.maxPositions}:${p.attentionFactor}:${Array.from(p.invFreq).join(',')}`;
  let t = byKey.get(key);
  if (!t) {
    const all = Int32Array.from({ length: p.maxPositions }, (_, i) => i);
    t = ropeTensors(p, all, 1, dtype, backend);
    const shape = [p.maxPositions, p.dim / 2];
    t = { cos: reshape(t.cos, shape), sin: reshape(t.sin, shape) };
    byKey.set(key, t);
  }
  return t;
}

/**
 * cos/sin tensors [rows, S, d/2] for an i32 positions tensor laid out [rows, S], selected on the
 * positions' backend from a table of every position (equal to ropeTensors on the same positions).
 */
export function ropeTensorsAt(
  p: RopeParams,
  positions: Tensor,
  rows: number,
  dtype: DType,
): { cos: Tensor; sin: Tensor } {
  const S = positions.size / rows;
  const table = ropeTable(p, dtype, positions.backend);
  const flat = reshape(positions, [positions.size]);
  const shape = [rows, S, p.dim / 2];
  return { cos: reshape(indexSelect(table.cos, flat, 0), shape), sin: reshape(indexSelect(table.sin, flat, 0), shape) };
}

/** RoPE on a plain array of rows [n, d] at `positions` (float64, for references and tests). */
export function applyRopeArray(p: RopeParams, x: ArrayLike<number>, positions: ArrayLike<number>): Float64Array {
  const d = p.dim;
  const half = d / 2;
  const out = new Float64Array(x.length);
  const rows = x.length / d;
  const per = rows / positions.length;
  const { cos, sin } = ropeCosSin(p, positions);
  for (let r = 0; r < rows; r++) {
    const t = Math.floor(r / per);
    for (let i = 0; i < half; i++) {
      const c = cos[t * half + i]!;
      const s = sin[t * half + i]!;
      const [a, b] = p.interleave ? [r * d + 2 * i, r * d + 2 * i + 1] : [r * d + i, r * d + i + half];
      out[a] = x[a]! * c - x[b]! * s;
      out[b] = x[b]! * c + x[a]! * s;
    }
  }
  return out;
}
