// The products of MLA inference on the CPU (no gradient): x's two down-projections (q_a or q_proj, and
// kv_a_proj_with_mqa) as one job, and the absorbed products q' = q_nope · W_UK and
// o = o_lat · W_UVᵀ per head against per-head weights laid out once (and kept resident): a decode
// step's few rows as one weight-product job of H GEMVs, a prefill's as one GEMM batched over the heads
// on the activations where they lie; instead of, every forward, narrowing kv_b_proj into W_UK / W_UV
// views, copying them contiguous, permuting the activations and running a batched GEMM.
//   W_UKᵀ [H, d_c, d_nope]: q'[h] = W_UKᵀ[h] · q_nope[h]   (a Linear weight of d_c outputs)
//   W_UV  [H, d_v, d_c]:    o[h]  = W_UV[h] · o_lat[h]     (rows of kv_b_proj, copied once)
// When every kv_b_proj value is a bf16 (a bf16 checkpoint widened to f32), the layout is bf16: the same
// values in half the bytes a decode step streams (the bf16 GEMV sums in another order than the f32 one).
import {
  cpu,
  CpuStorage,
  F32WorkArrays,
  isGradEnabled,
  isResident,
  type Linear,
  sgemm,
  takeF32,
  Tensor,
  weightProducts,
  type WeightOperand,
  type WeightProductArgs,
} from '@dsv3/core';
import { RESIDENT_MIN_FLOATS } from './attention-cpu.js';

export interface AbsorbedCpuWeights {
  /** the kv_b_proj weight tensor these were built from (a new tensor, e.g. loaded weights, rebuilds them) */
  source: Tensor;
  /**
   * W_UKᵀ [H, d_c, d_nope] and W_UV [H, d_v, d_c], resident where the engine has room: bf16 when every
   * value of kv_b_proj is one (exactly the same values), else f32
   */
  wUKt: CpuStorage;
  wUV: CpuStorage;
}

interface Dims {
  H: number;
  dn: number;
  dv: number;
  dc: number;
}

/**
 * Whether the CPU path applies: inference (no gradient recorded), f32 queries and an f32 kv_b_proj on
 * the CPU.
 */
export function absorbedCpuApplies(q: Tensor, kvB: Tensor): boolean {
  return (
    !isGradEnabled() &&
    q.backend.name === 'cpu' &&
    q.dtype === 'f32' &&
    kvB.backend === q.backend &&
    kvB.dtype === 'f32'
  );
}

/** Per-head absorbed weights of kv_b_proj [H·(d_nope + d_v), d_c], rebuilt when `have` is not of `kvB`. */
export function absorbedCpuWeights(kvB: Tensor, d: Dims, have: AbsorbedCpuWeights | null): AbsorbedCpuWeights {
  if (have && have.source === kvB) return have;
  const { H, dn, dv, dc } = d;
  const w = (kvB.storage as CpuStorage).data as Float32Array;
  const bits = new Uint32Array(w.buffer, w.byteOffset, w.length);
  const dtype = allBf16(bits) ? 'bf16' : 'f32';
  const wUKt = cpu.allocResident(dtype, H * dc * dn);
  const wUV = cpu.allocResident(dtype, H * dv * dc);
  // bf16: the high halves of the f32 bit patterns (exact: their low halves are zero)
  const src = dtype === 'bf16' ? bits : w;
  const uk = wUKt.data as Float32Array | Uint16Array,
    uv = wUV.data as Float32Array | Uint16Array;
  const put = dtype === 'bf16' ? (v: number): number => v >>> 16 : (v: number): number => v;
  for (let h = 0; h < H; h++) {
    const row0 = h * (dn + dv);
    for (let i = 0; i < dn; i++)
      for (let c = 0; c < dc; c++) uk[(h * dc + c) * dn + i] = put(src[(row0 + i) * dc + c]!);
    for (let j = (row0 + dn) * dc, o = h * dv * dc; j < (row0 + dn + dv) * dc; j++, o++) uv[o] = put(src[j]!);
  }
  return { source: kvB, wUKt, wUV };
}

/** Most query rows (B·S) the per-head GEMV job takes (measured: slower than the batched GEMM at 16). */
export const ABSORBED_CPU_GEMV_MAX_ROWS = 4;

/** Whether every f32 (as bits) is a bf16 value: its low 16 bits zero. */
function allBf16(bits: Uint32Array): boolean {
  for (let i = 0; i < bits.length; i++) if ((bits[i]! & 0xffff) !== 0) return false;
  return true;
}

// A host x's copy, kept between calls in the GEMM engine's memory, where the weight products read each
// head's rows in place at their pitch; perHead is not re-entrant.
const headRows = new F32WorkArrays(true);

/**
 * y[r, h, :] = W[h] · x[r, h, :] for every row r of x [..., H, k] and head h, W [H, n, k]; `resident`
 * (and at least RESIDENT_MIN_FLOATS of y): into storage in the engine's memory where it has room (the
 * latent attention reads the queries there in place; the caller disposes them once read). f32 W and more than ABSORBED_CPU_GEMV_MAX_ROWS rows: one GEMM batched over the
 * heads that reads each head's rows of x and writes its rows of y where they lie (row pitches H·k and
 * H·n), so nothing is permuted or gathered; per element it is the batched GEMM of the permuted operands
 * (same kernel, same depth order), bit for bit. Otherwise one weight-product job of H products (GEMVs
 * for few rows, the weight GEMM for bf16 W and many), head h reading x's columns [h·k, (h+1)·k) and
 * writing y's [h·n, (h+1)·n) at the same row pitches: x where it lies when it is in the engine's memory
 * (else one copy there), y written in place — nothing gathered per head.
 */
function perHead(
  x: Tensor,
  W: Float32Array | Uint16Array,
  H: number,
  n: number,
  k: number,
  resident: boolean,
): CpuStorage {
  const xs = (x.storage as CpuStorage).data as Float32Array;
  const rows = x.size / (H * k);
  const out =
    resident && rows * H * n >= RESIDENT_MIN_FLOATS
      ? cpu.allocResident('f32', rows * H * n, false) // every head writes its columns of every row
      : new CpuStorage(new Float32Array(rows * H * n));
  const y = out.data as Float32Array;
  if (rows > ABSORBED_CPU_GEMV_MAX_ROWS && W instanceof Float32Array) {
    sgemm({
      m: rows,
      n,
      k,
      a: xs,
      lda: H * k,
      strideA: k,
      b: W,
      transB: true,
      strideB: n * k,
      c: y,
      ldc: H * n,
      strideC: n,
      batch: H,
    });
    return out;
  }
  let xIn = xs;
  if (!isResident(xs)) {
    xIn = headRows.take(0, rows * H * k);
    xIn.set(xs.subarray(0, rows * H * k));
  }
  const jobs: WeightProductArgs[] = [];
  for (let h = 0; h < H; h++)
    jobs.push({
      m: rows,
      n,
      k,
      x: xIn.subarray(h * k),
      ldx: H * k,
      w: W.subarray(h * n * k, (h + 1) * n * k),
      y: y.subarray(h * n),
      ldy: H * n,
    });
  weightProducts(jobs);
  return out;
}

/**
 * q' = q_nope · W_UK per head: [B, S, H, d_nope] → [B, S, H, d_c]; a prefill's in the engine's memory
 * where it has room (dispose it once the attention has read it: its block goes back for the next layer's).
 */
export function absorbQueryCpu(qNope: Tensor, a: AbsorbedCpuWeights, d: Dims): Tensor {
  const y = perHead(qNope, a.wUKt.data as Float32Array | Uint16Array, d.H, d.dc, d.dn, true);
  return new Tensor(qNope.backend, y, [...qNope.shape.slice(0, -1), d.dc], 'f32');
}

/** o = o_lat · W_UVᵀ per head, heads concatenated: [B, S, H, d_c] → [B, S, H·d_v]. */
export function absorbOutputCpu(oLat: Tensor, a: AbsorbedCpuWeights, d: Dims): Tensor {
  // host memory: o_proj's matmul keeps views of its input that nobody disposes
  const y = perHead(oLat, a.wUV.data as Float32Array | Uint16Array, d.H, d.dv, d.dc, false);
  return new Tensor(oLat.backend, y, [...oLat.shape.slice(0, -2), d.H * d.dv], 'f32');
}

/** Output features [start, start + count) of a Linear: its rows of W as a product of their own. */
export interface LinearRows {
  linear: Linear;
  start: number;
  count: number;
}

/**
 * Several Linears of the same input x [..., k] (or row ranges of them: each range's output is its own
 * tensor, no split copying it out of the whole) as one weight-product job (x staged once), each output
 * exactly its forward's (its columns); null unless inference on the CPU with f32 x and plain CPU weights.
 */
export function downProjectionsCpu(x: Tensor, products: readonly (Linear | LinearRows)[]): Tensor[] | null {
  if (isGradEnabled() || x.backend.name !== 'cpu' || x.dtype !== 'f32') return null;
  const k = x.shape.at(-1)!;
  // loops, not map(): see PagedLatentCache.appendRows (cache.ts)
  const ops: WeightOperand[] = [];
  const widths: number[] = [];
  for (const p of products) {
    const l = 'linear' in p ? p.linear : p;
    const whole = l.inFeatures === k ? l.cpuWeightOperand() : null;
    const o = whole && 'linear' in p ? operandRows(whole, k, l.outFeatures, p.start, p.count) : whole;
    if (o === null) return null;
    ops.push(o);
    widths.push('linear' in p ? p.count : l.outFeatures);
  }
  const m = x.size / k;
  const xs = (x.storage as CpuStorage).data as Float32Array;
  const jobs: WeightProductArgs[] = [];
  for (let i = 0; i < products.length; i++) {
    const n = widths[i]!;
    // kernel outputs (a prefill's in the engine's memory, written in place there): no fresh zeroed host
    // arrays, 1.4 MB a layer at 512 tokens (their page faults were ~10 ms of a V3-mini prefill)
    jobs.push({ m, n, k, x: xs, ...ops[i]!, y: takeF32(m * n) });
  }
  weightProducts(jobs);
  const ys: Tensor[] = [];
  for (const j of jobs) ys.push(new Tensor(x.backend, new CpuStorage(j.y), [...x.shape.slice(0, -1), j.n], 'f32'));
  return ys;
}

/** FP8 weights' scale blocks are 128 x 128 (DeepSeek-V3's weight_scale_inv). */
const FP8_BLOCK = 128;

/**
 * Rows [start, start + count) of a weight operand W [n, k] (views, no copy); null where FP8 scale blocks
 * would straddle the range (it must start on a block and end on one or at n).
 */
export function operandRows(
  op: WeightOperand,
  k: number,
  n: number,
  start: number,
  count: number,
): WeightOperand | null {
  if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count <= 0 || start + count > n)
    throw new RangeError(`rows ${start}..${start + count - 1} of a weight with ${n} rows`);
  const w = op.w.subarray(start * k, (start + count) * k);
  if (!op.scales) return { w };
  const end = start + count;
  if (start % FP8_BLOCK !== 0 || (end % FP8_BLOCK !== 0 && end !== n)) return null;
  const blocksK = Math.ceil(k / FP8_BLOCK);
  return { w, scales: op.scales.subarray((start / FP8_BLOCK) * blocksK, Math.ceil(end / FP8_BLOCK) * blocksK) };
}
