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
  /**
   * Leading dimensions: elements between consecutive stored rows of A, B and C (default: dense, the
   * stored row's width). Lets a product read and write one head's [S, d] slice of a [B, S, H, d]
   * tensor (ld = H·d) in place.
   */
  lda?: number;
  ldb?: number;
  ldc?: number;
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
  lda: number;
  ldb: number;
  ldc: number;
}

/** A resolved product whose row pitches may be left out (dense); see withPitches. */
export type MaybePitched = Omit<Gemm, 'lda' | 'ldb' | 'ldc'> & Partial<Pick<Gemm, 'lda' | 'ldb' | 'ldc'>>;

/** The dense row pitches [lda, ldb, ldc]: each stored row packed against the next. */
const densePitches = (g: Pick<Gemm, 'm' | 'n' | 'k' | 'transA' | 'transB'>): [number, number, number] => [
  g.transA ? g.m : g.k,
  g.transB ? g.k : g.n,
  g.n,
];

/** `g` with its missing row pitches set to the dense ones. */
export const withPitches = (g: MaybePitched): Gemm => {
  if (g.lda !== undefined && g.ldb !== undefined && g.ldc !== undefined) return g as Gemm;
  const [lda, ldb, ldc] = densePitches(g);
  return { ...g, lda: g.lda ?? lda, ldb: g.ldb ?? ldb, ldc: g.ldc ?? ldc };
};

/** Elements from a stored matrix's first element to one past its last: `rows` rows `ld` apart. */
const storedSpan = (rows: number, cols: number, ld: number): number =>
  rows === 0 || cols === 0 ? 0 : (rows - 1) * ld + cols;

/**
 * Stored spans (elements, first to last + 1) of one item of A, B and C with their row pitches; stored
 * shapes A [m, k] (or [k, m]), B [k, n] (or [n, k]), C [m, n].
 */
export const storedSpans = (g: Gemm): [number, number, number] => [
  g.transA ? storedSpan(g.k, g.m, g.lda) : storedSpan(g.m, g.k, g.lda),
  g.transB ? storedSpan(g.n, g.k, g.ldb) : storedSpan(g.k, g.n, g.ldb),
  storedSpan(g.m, g.n, g.ldc),
];

/** Whether the dense defaults hold (every stored row packed against the next). */
export const isDense = (g: Gemm): boolean => {
  const [lda, ldb, ldc] = densePitches(g);
  return g.lda === lda && g.ldb === ldb && g.ldc === ldc;
};

function count(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw new RangeError(`sgemm: ${name} must be a non-negative integer, got ${String(v)}`);
  }
  return v;
}

/** A leading dimension: at least the stored row's width. */
function leading(name: string, v: unknown, width: number): number {
  const ld = count(name, v ?? width);
  if (ld < width) throw new RangeError(`sgemm: ${name} (${ld}) must be >= the stored row width (${width})`);
  return ld;
}

/**
 * Batched outputs must not overlap: either each item's rows end before the next item starts, or the
 * items sit side by side inside one row pitch (heads of a [B, S, H, d] tensor).
 */
function checkOutputsApart(g: Gemm): void {
  const { m, n, batch, strideC, ldc } = g;
  if (batch <= 1 || m * n === 0) return;
  const span = storedSpan(m, n, ldc);
  if (strideC >= span || (m === 1 && strideC >= n) || (strideC >= n && (batch - 1) * strideC + n <= ldc)) return;
  throw new RangeError(
    `sgemm: batched outputs overlap (strideC ${strideC}, ldc ${ldc}, m ${m}, n ${n}, batch ${batch}): items need strideC >= ${span}, or strideC >= n with all items inside one row pitch`,
  );
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
    strideA: 0,
    strideB: 0,
    strideC: 0,
    lda: 0,
    ldb: 0,
    ldc: 0,
  };
  const [lda, ldb, ldc] = densePitches(g);
  g.lda = leading('lda', args.lda, lda);
  g.ldb = leading('ldb', args.ldb, ldb);
  g.ldc = leading('ldc', args.ldc, ldc);
  const [aSpan, bSpan, cSpan] = storedSpans(g);
  g.strideA = count('strideA', args.strideA ?? aSpan);
  g.strideB = count('strideB', args.strideB ?? bSpan);
  g.strideC = count('strideC', args.strideC ?? cSpan);
  checkOutputsApart(g);
  checkSpan('a', g.a, g.aOffset, g.strideA, batch, m * k === 0 ? 0 : aSpan);
  checkSpan('b', g.b, g.bOffset, g.strideB, batch, k * n === 0 ? 0 : bSpan);
  checkSpan('c', g.c, g.cOffset, g.strideC, batch, cSpan);
  return g;
}
