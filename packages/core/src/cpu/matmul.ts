// Batched matrix product on the CPU: f32 goes to the WebAssembly SIMD GEMM; f32 activations against
// a bf16 weight (weight-only bf16) run with the weight decoded in the kernel's registers (an f16
// weight, the WebGPU f16 mode's storage, is widened first: this is its reference, not a fast path); other float
// dtypes are computed in f64 (f64 tensors are what the gradient checks use).
import type { Backend, KernelTensor } from '../backend.js';
import type { KernelAttrs } from '../kernel-types.js';
import { broadcastShapes, fmt, ShapeError, sizeOf, stridesOf } from '../shape.js';
import { floatArray, num, raw, result, wrap } from './backend.js';
import { decodeBf16, decodeF16 } from '../dtype.js';
import { type GemmArgs, sgemm, sgemmDeferred, sgemmMany, weightProduct } from './gemm/index.js';
import { takeF32 } from './pool.js';

export interface MatmulPlan {
  m: number;
  n: number;
  k: number;
  batchShape: number[];
  /** per output batch index, the matrix index into a and b (broadcast) */
  aIndex: Int32Array;
  bIndex: Int32Array;
}

/** Shapes of a batched product; shared by every backend so their errors agree. */
export function planMatmul(
  aShape: readonly number[],
  bShape: readonly number[],
  transA: boolean,
  transB: boolean,
): MatmulPlan {
  if (aShape.length < 2 || bShape.length < 2)
    throw new ShapeError(`matmul needs operands of rank >= 2, got ${fmt(aShape)} and ${fmt(bShape)}`);
  const ra = aShape.length;
  const rb = bShape.length;
  const m = transA ? aShape[ra - 1]! : aShape[ra - 2]!;
  const ka = transA ? aShape[ra - 2]! : aShape[ra - 1]!;
  const kb = transB ? bShape[rb - 1]! : bShape[rb - 2]!;
  const n = transB ? bShape[rb - 2]! : bShape[rb - 1]!;
  if (ka !== kb) {
    throw new ShapeError(
      `matmul inner dimensions differ: ${fmt(aShape)}${transA ? 'ᵀ' : ''} @ ${fmt(bShape)}${transB ? 'ᵀ' : ''} (${ka} vs ${kb})`,
    );
  }
  const aBatch = aShape.slice(0, -2);
  const bBatch = bShape.slice(0, -2);
  const batchShape = broadcastShapes(aBatch, bBatch);
  const count = sizeOf(batchShape);
  const aIndex = new Int32Array(count);
  const bIndex = new Int32Array(count);
  const ostr = stridesOf(batchShape);
  const idxOf = (own: readonly number[], flat: number): number => {
    const st = stridesOf(own);
    let ix = 0;
    for (let d = 0; d < own.length; d++) {
      const t = batchShape.length - own.length + d;
      const coord = Math.floor(flat / ostr[t]!) % batchShape[t]!;
      ix += (own[d] === 1 ? 0 : coord) * st[d]!;
    }
    return ix;
  };
  for (let i = 0; i < count; i++) {
    aIndex[i] = idxOf(aBatch, i);
    bIndex[i] = idxOf(bBatch, i);
  }
  return { m, n, k: ka, batchShape, aIndex, bIndex };
}

export function matmulKernel(
  _b: Backend,
  [a, b]: KernelTensor[],
  { transA, transB }: KernelAttrs['matmul'],
): KernelTensor[] {
  const p = planMatmul(a!.shape, b!.shape, transA, transB);
  const { m, n, k } = p;
  const shape = [...p.batchShape, m, n];
  const batch = p.aIndex.length;
  const f32Act = a!.dtype === 'f32' && (b!.dtype === 'f32' || b!.dtype === 'bf16' || b!.dtype === 'f16');
  // x [..., m, k] against one weight W [n, k]: every row of x in one product, so W streams once.
  if (f32Act && b!.dtype !== 'f16' && b!.shape.length === 2 && transB && !transA && a!.shape.length >= 2) {
    const C = takeF32(batch * m * n);
    weightProduct({ m: batch * m, n, k, x: raw(a!) as Float32Array, w: raw(b!) as Float32Array | Uint16Array, y: C });
    return [wrap('f32', shape, C)];
  }
  if (f32Act) {
    const A = raw(a!) as Float32Array;
    const B =
      b!.dtype === 'bf16'
        ? decodeBf16(raw(b!) as Uint16Array)
        : b!.dtype === 'f16'
          ? decodeF16(raw(b!) as Uint16Array)
          : (raw(b!) as Float32Array);
    const C = takeF32(batch * m * n);
    for (let i = 0; i < batch; i++) {
      sgemm({
        m,
        n,
        k,
        a: A,
        aOffset: p.aIndex[i]! * m * k,
        transA,
        b: B,
        bOffset: p.bIndex[i]! * k * n,
        transB,
        c: C,
        cOffset: i * m * n,
      });
    }
    return [wrap('f32', shape, C)];
  }
  const A = num(a!);
  const B = num(b!);
  const C = floatArray(a!.dtype, batch * m * n);
  // Row-major strides of op(A) [m,k] and op(B) [k,n] inside each matrix.
  const [sam, sak] = transA ? [1, m] : [k, 1];
  const [sbk, sbn] = transB ? [1, k] : [n, 1];
  const row = new Float64Array(n);
  for (let bi = 0; bi < batch; bi++) {
    const ao = p.aIndex[bi]! * m * k;
    const bo = p.bIndex[bi]! * k * n;
    for (let i = 0; i < m; i++) {
      row.fill(0);
      for (let kk = 0; kk < k; kk++) {
        const av = A[ao + i * sam + kk * sak]!;
        const bb = bo + kk * sbk;
        for (let j = 0; j < n; j++) row[j]! += av * B[bb + j * sbn]!;
      }
      C.set(row, (bi * m + i) * n);
    }
  }
  return [result(a!.dtype, shape, C)];
}

/**
 * [g, a, b] → [dA, dB] of C = op(A) · op(B) with upstream gradient g, each the product matmul's
 * backward composes (d op(A) = g op(B)ᵀ, d op(B) = op(A)ᵀ g, no transpose materialised). Two f32
 * matrices: both products as one GEMM job (sgemmMany: each on its own thread, one hand-out to the
 * workers), bitwise what two 'matmul' kernel calls give; otherwise those two calls. With `deferB` (B a
 * leaf, whose gradient nothing reads before the backward pass ends) dB may instead run on the workers
 * in the background (sgemmDeferred) while dA runs now: the same bits, written before anything reads them.
 */
export function matmulGradsKernel(
  be: Backend,
  [g, a, b]: KernelTensor[],
  { transA, transB, deferB }: KernelAttrs['matmul'] & { deferB?: boolean },
): KernelTensor[] {
  const products: [KernelTensor, KernelTensor, boolean, boolean][] = [
    !transA ? [g!, b!, false, !transB] : [b!, g!, transB, true],
    !transB ? [a!, g!, !transA, false] : [g!, a!, true, transA],
  ];
  if (![g!, a!, b!].every((t) => t.dtype === 'f32' && t.shape.length === 2))
    return products.map(([x, y, tA, tB]) => matmulKernel(be, [x, y], { transA: tA, transB: tB })[0]!);
  const jobs = products.map(([x, y, tA, tB]): GemmArgs => {
    const { m, n, k } = planMatmul(x.shape, y.shape, tA, tB);
    return { m, n, k, a: raw(x) as Float32Array, transA: tA, b: raw(y) as Float32Array, transB: tB, c: takeF32(m * n) };
  });
  // dB (a Linear's weight gradient, read only once the backward ends) runs on the workers in the
  // background while this thread goes on; dA, which the pass needs next, runs now.
  if (deferB && sgemmDeferred(jobs[1]!)) sgemm(jobs[0]!);
  else sgemmMany(jobs);
  return jobs.map((p) => wrap('f32', [p.m, p.n], p.c));
}
