// The CPU grouped kernels write each expert's f32 product straight into its rows of the output
// (core's sgemm, called as core's 'matmul' kernel calls it) instead of into a fresh product that is
// copied there. That must change no bit: the forward product, the input gradient dY·W and the weight
// gradients are compared bitwise with the per-expert 'matmul' kernel path, for f32 / bf16 / f16
// weights, ragged segments (empty experts included, short segments that take the GEMV) and 1 and 2 threads.
import { afterAll, describe, expect, it } from 'vitest';
import { expectSameBits } from '@dsv3/core/testing';
import {
  cpu,
  CpuStorage,
  encodeBf16,
  encodeF16,
  getKernel,
  mul,
  Rng,
  setGemmThreads,
  sum,
  Tensor,
  tensor,
  type KernelTensor,
} from '@dsv3/core';
import { groupedLinear } from '../src/index';
import { randValues } from './layer-helpers';

afterAll(() => setGemmThreads(2));

type WeightDType = 'f32' | 'bf16' | 'f16';

const matmulKernel = getKernel<{ transA: boolean; transB: boolean }>('matmul', 'cpu');

/** Rows [r0, r0 + rows) of a 2-D CPU tensor of the given row width, as a zero-copy kernel operand. */
function rowsOf(t: Tensor, r0: number, rows: number, width: number): KernelTensor {
  const d = (t.storage as CpuStorage).data as Float32Array;
  return { storage: new CpuStorage(d.subarray(r0 * width, (r0 + rows) * width)), shape: [rows, width], dtype: t.dtype };
}

/** The per-expert path the kernel replaced: core's 'matmul' kernel per segment, copied into zeroed rows. */
function perExpertProduct(x: Tensor, ws: Tensor[], offsets: number[], transB: boolean): Float32Array {
  const [N, K] = x.shape as [number, number];
  const O = transB ? ws[0]!.shape[0]! : ws[0]!.shape[1]!;
  const out = new Float32Array(N * O);
  ws.forEach((w, e) => {
    const c = offsets[e + 1]! - offsets[e]!;
    if (c === 0) return;
    const [y] = matmulKernel(cpu, [rowsOf(x, offsets[e]!, c, K), w], { transA: false, transB });
    out.set((y!.storage as CpuStorage).data as Float32Array, offsets[e]! * O);
  });
  return out;
}

/** dW_e = g_segᵀ · x_seg by core's 'matmul' kernel. */
function perExpertWeightGrad(g: Tensor, x: Tensor, offsets: number[], e: number): Float32Array {
  const c = offsets[e + 1]! - offsets[e]!;
  const O = g.shape[1]!;
  const K = x.shape[1]!;
  const [dw] = matmulKernel(cpu, [rowsOf(g, offsets[e]!, c, O), rowsOf(x, offsets[e]!, c, K)], {
    transA: true,
    transB: false,
  });
  return (dw!.storage as CpuStorage).data as Float32Array;
}

function weight(dtype: WeightDType, O: number, K: number, seed: number): Tensor {
  const v = Float32Array.from(randValues(O * K, seed));
  if (dtype === 'f32') return tensor(v, { shape: [O, K], dtype: 'f32' });
  const encoded = dtype === 'bf16' ? encodeBf16(v) : encodeF16(v);
  return new Tensor(cpu, new CpuStorage(encoded), [O, K], dtype);
}

/** Segment sizes: fixed ragged cases and random ones with about a quarter of the experts empty. */
function segmentCases(): { K: number; O: number; counts: number[] }[] {
  const r = new Rng(11);
  const random = [0, 1, 2].map((i) => ({
    K: [24, 37, 64][i]!,
    O: [40, 19, 48][i]!,
    counts: Array.from({ length: 6 + 3 * i }, () => (r.uniform() < 0.25 ? 0 : Math.floor(r.uniform() * 90))),
  }));
  return [
    { K: 24, O: 40, counts: [3, 0, 7, 0, 3] }, // short segments (the GEMV's m), an empty one inside
    { K: 96, O: 80, counts: [70, 0, 1, 33, 130, 0, 5] }, // products large enough to thread
    { K: 37, O: 19, counts: [0, 0, 5, 0] }, // leading and trailing empty experts
    ...random,
  ];
}

function offsetsOf(counts: number[]): number[] {
  const offsets = [0];
  for (const c of counts) offsets.push(offsets[offsets.length - 1]! + c);
  return offsets;
}

describe.each([1, 2])('CPU grouped kernels vs the per-expert matmul kernel, bitwise (%i threads)', (threads) => {
  it.each(['f32', 'bf16', 'f16'] as const)('%s weights: product, input gradient and weight gradients', (wd) => {
    setGemmThreads(threads);
    for (const [i, { K, O, counts }] of segmentCases().entries()) {
      const offsets = offsetsOf(counts);
      const N = offsets[offsets.length - 1]!;
      const x = tensor(Float32Array.from(randValues(N * K, 100 + i)), { shape: [N, K], dtype: 'f32' }).requireGrad();
      // 16-bit weights are weight-only (no gradient); f32 weights get theirs.
      const ws = counts.map((_, e) => {
        const w = weight(wd, O, K, 200 + 10 * i + e);
        return wd === 'f32' ? w.requireGrad() : w;
      });
      const dy = tensor(Float32Array.from(randValues(N * O, 300 + i)), { shape: [N, O], dtype: 'f32' });
      const y = groupedLinear(x, ws, offsets, { impl: 'fused' });
      expectSameBits(y.dataSync(), perExpertProduct(x, ws, offsets, true), 'y', { nan: 'bits' });
      sum(mul(y, dy)).backward(); // y's gradient is dy, bit for bit
      expectSameBits(x.grad!.dataSync(), perExpertProduct(dy, ws, offsets, false), 'dx', { nan: 'bits' });
      if (wd !== 'f32') continue;
      ws.forEach((w, e) => {
        if (counts[e] === 0) expect(w.grad).toBeNull();
        else expectSameBits(w.grad!.dataSync(), perExpertWeightGrad(dy, x, offsets, e), 'dw', { nan: 'bits' });
      });
    }
  });
});
