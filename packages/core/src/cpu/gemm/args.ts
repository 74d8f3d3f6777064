// Argument validation and defaulting shared by the wasm and pure-JS paths.

export interface GemmArgs {
  m: number;
  n: number;
  k: number;
  a: Float32Array;
  aOffset?: number;
  transA?: boolean; // A is [m,k] row-major, or [k,m] if transA
  b: Float32Array;
  bOffset?: number;
  transB?: boolean; // B is [k,n] row-major, or [n,k] if transB
  c: Float32Array;
  cOffset?: number; // C [m,n] row-major, overwritten: C = op(A) @ op(B)
  batch?: number;
  strideA?: number;
  strideB?: number;
  strideC?: number; // batched: element strides between matrices (strideA/B may be 0 = broadcast)
}

/** GemmArgs with every optional field resolved. */
export interface Gemm {
  m: number;
  n: number;
  k: number;
  a: Float32Array;
  aOffset: number;
  transA: boolean;
  b: Float32Array;
  bOffset: number;
  transB: boolean;
  c: Float32Array;
  cOffset: number;
  batch: number;
  strideA: number;
  strideB: number;
  strideC: number;
}

function count(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw new RangeError(`sgemm: ${name} must be a non-negative integer, got ${String(v)}`);
  }
  return v;
}

function checkSpan(name: string, arr: Float32Array, off: number, stride: number, batch: number, size: number): void {
  if (size === 0 || batch === 0) return;
  const end = off + (batch - 1) * stride + size;
  if (end > arr.length) {
    throw new RangeError(`sgemm: ${name} is too short: needs ${end} elements (offset ${off}), has ${arr.length}`);
  }
}

export function normalizeGemm(args: GemmArgs): Gemm {
  if (args === null || typeof args !== 'object') throw new TypeError('sgemm: expected an argument object');
  const m = count('m', args.m);
  const n = count('n', args.n);
  const k = count('k', args.k);
  for (const key of ['a', 'b', 'c'] as const) {
    if (!(args[key] instanceof Float32Array)) throw new TypeError(`sgemm: ${key} must be a Float32Array`);
  }
  const batch = count('batch', args.batch ?? 1);
  const g: Gemm = {
    m,
    n,
    k,
    a: args.a,
    aOffset: count('aOffset', args.aOffset ?? 0),
    transA: !!args.transA,
    b: args.b,
    bOffset: count('bOffset', args.bOffset ?? 0),
    transB: !!args.transB,
    c: args.c,
    cOffset: count('cOffset', args.cOffset ?? 0),
    batch,
    strideA: count('strideA', args.strideA ?? m * k),
    strideB: count('strideB', args.strideB ?? k * n),
    strideC: count('strideC', args.strideC ?? m * n),
  };
  if (batch > 1 && g.strideC < m * n && m * n > 0) {
    throw new RangeError(`sgemm: strideC (${g.strideC}) must be >= m*n (${m * n}) so batched outputs do not overlap`);
  }
  checkSpan('a', g.a, g.aOffset, g.strideA, batch, m * k);
  checkSpan('b', g.b, g.bOffset, g.strideB, batch, k * n);
  checkSpan('c', g.c, g.cOffset, g.strideC, batch, m * n);
  return g;
}
