// sgemmMany (several products as one job of the engine's threads) against one sgemm call per
// product, bitwise: ragged shapes (rows that are not whole tiles, k past one depth block), every
// transpose, operands at offsets inside shared arrays (an MoE layer's segments), row pitches, GEMV-
// sized rows, k = 0, resident operands, 1 and 2 threads; and against a float64 reference.
import { afterAll, describe, expect, it } from 'vitest';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { allocResident, freeResident, type GemmArgs, setGemmThreads, sgemm, sgemmMany } from '../src/cpu/gemm/index.js';
import { Rng } from '../src/rng.js';
import { relativeError } from '../src/testing.js';

const saved = { ...gemmConfig };
afterAll(() => Object.assign(gemmConfig, saved));
const rng = new Rng(4242);
const rand = (len: number): Float32Array => rng.fillUniform(new Float32Array(len), -1, 1) as Float32Array;

/**
 * An MoE-like list: segments of rows of one x [N, K] (offsets, ragged counts, empty ones) against
 * per-expert weights, the given transposes, outputs into rows of one C (or, for Aᵀ·B, one C each).
 */
function segments(counts: number[], K: number, O: number, transA: boolean, transB: boolean): GemmArgs[] {
  const N = counts.reduce((a, b) => a + b, 0);
  const x = rand(N * K);
  const g = rand(N * O);
  const out = new Float32Array(N * O).fill(Number.NaN);
  const list: GemmArgs[] = [];
  let r0 = 0;
  for (const c of counts) {
    if (transA) {
      // dW = g_segᵀ · x_seg: [O, K] over the segment's c rows
      list.push({
        m: O,
        n: K,
        k: c,
        a: g,
        aOffset: r0 * O,
        transA: true,
        b: x,
        bOffset: r0 * K,
        c: new Float32Array(O * K),
      });
    } else {
      // y_seg = x_seg · op(W_e)
      const w = rand(K * O);
      list.push({ m: c, n: O, k: K, a: x, aOffset: r0 * K, b: w, transB, c: out, cOffset: r0 * O });
    }
    r0 += c;
  }
  return list;
}

/** Each product's output as one sgemm call writes it, and as sgemmMany writes it (fresh outputs each). */
function bothWays(list: GemmArgs[]): [Float32Array[], Float32Array[]] {
  const run = (many: boolean): Float32Array[] => {
    const outs = new Map<Float32Array, Float32Array>();
    const fresh = list.map((p) => {
      if (!outs.has(p.c)) outs.set(p.c, p.c.slice());
      return { ...p, c: outs.get(p.c)! };
    });
    if (many) sgemmMany(fresh);
    else for (const p of fresh) sgemm(p);
    return [...outs.values()];
  };
  return [run(false), run(true)];
}

const expectBitwise = (list: GemmArgs[]) => {
  const [one, many] = bothWays(list);
  expect(many.length).toBe(one.length);
  one.forEach((c, i) => expect(Buffer.from(many[i]!.buffer).equals(Buffer.from(c.buffer))).toBe(true));
};

const layouts: [string, number[]][] = [
  ['16 experts, ragged', [197, 260, 0, 233, 301, 1, 3, 177, 264, 250, 0, 229, 158, 290, 305, 270]],
  ['empty first and last, tiny segments', [0, 2, 4, 5, 7, 13, 0]],
  ['one segment', [130]],
  ['two large', [513, 389]],
];

describe('sgemmMany', () => {
  for (const threads of [1, 2]) {
    for (const [name, counts] of layouts) {
      for (const [transA, transB] of [
        [false, true],
        [false, false],
        [true, false],
      ] as const) {
        it(`${threads} thread(s), ${name}, ${transA ? 'Aᵀ' : 'A'}·${transB ? 'Bᵀ' : 'B'}: bitwise one call per product`, () => {
          setGemmThreads(threads);
          for (const [K, O] of [
            [128, 64],
            [64, 128],
            [300, 37],
          ] as const)
            expectBitwise(segments(counts, K, O, transA, transB));
        });
      }
    }
    it(`${threads} thread(s): pitched operands, k = 0 and m = 0 products, mixed in one list`, () => {
      setGemmThreads(threads);
      const a = rand(70 * 50);
      const b = rand(60 * 90);
      const c = new Float32Array(70 * 100);
      expectBitwise([
        { m: 33, n: 21, k: 17, a, aOffset: 5, lda: 50, b, bOffset: 3, ldb: 90, c, cOffset: 1, ldc: 100 },
        {
          m: 9,
          n: 40,
          k: 60,
          a,
          transA: true,
          lda: 50,
          b,
          transB: true,
          bOffset: 7,
          ldb: 90,
          c,
          cOffset: 50,
          ldc: 100,
        },
        { m: 12, n: 8, k: 0, a, b, c, cOffset: 4000 },
        { m: 0, n: 8, k: 5, a, b, c },
        { m: 64, n: 30, k: 40, a, transA: true, b, c, cOffset: 5000, ldc: 31 },
      ]);
    });
    it(`${threads} thread(s): resident operands and outputs`, () => {
      setGemmThreads(threads);
      const x = allocResident('f32', 300 * 128) as Float32Array;
      const w = allocResident('f32', 64 * 128) as Float32Array;
      const y = allocResident('f32', 300 * 64) as Float32Array;
      x.set(rand(x.length));
      w.set(rand(w.length));
      try {
        expectBitwise([
          { m: 200, n: 64, k: 128, a: x, b: w, transB: true, c: y },
          { m: 100, n: 64, k: 128, a: x, aOffset: 200 * 128, b: rand(64 * 128), transB: true, c: y, cOffset: 200 * 64 },
        ]);
      } finally {
        for (const r of [x, w, y]) freeResident(r);
      }
    });
  }

  it("a list past one job's scratch runs as several jobs, bitwise the same", () => {
    setGemmThreads(2);
    gemmConfig.manyJobBytes = 200_000;
    try {
      expectBitwise(segments([197, 260, 0, 233, 301, 1, 3, 177], 128, 64, false, true));
      expectBitwise(segments([197, 260, 233, 301], 128, 64, true, false));
    } finally {
      gemmConfig.manyJobBytes = saved.manyJobBytes;
    }
  });

  it('the two gradients of one product stage their shared operand once, bitwise', () => {
    for (const threads of [1, 2]) {
      setGemmThreads(threads);
      const [M, N, K] = [300, 70, 45];
      const g = rand(M * N);
      const w = rand(N * K);
      const x = rand(M * K);
      expectBitwise([
        { m: M, n: K, k: N, a: g, b: w, c: new Float32Array(M * K) },
        { m: N, n: K, k: M, a: g, transA: true, b: x, c: new Float32Array(N * K) },
      ]);
    }
  });

  it('copies a product out only once all its row stripes are done (jobs back to back, workers awake)', () => {
    // Two products at 2 threads: 4 stripes each, the workers finishing some while this thread copies;
    // new operands every job, so a copy made early would hold the last job's values.
    setGemmThreads(2);
    const [M, N, K] = [512, 96, 128];
    for (let rep = 0; rep < 40; rep++) {
      const [g, w, x] = [rand(M * N), rand(N * K), rand(M * K)];
      expectBitwise([
        { m: M, n: K, k: N, a: g, b: w, c: new Float32Array(M * K) },
        { m: N, n: K, k: M, a: g, transA: true, b: x, c: new Float32Array(N * K) },
      ]);
    }
  });

  it('agrees with a float64 reference', () => {
    setGemmThreads(2);
    const list = segments([97, 0, 131, 64], 150, 48, false, true);
    sgemmMany(list);
    for (const p of list) {
      const ref = new Float64Array(p.m * p.n);
      for (let i = 0; i < p.m; i++)
        for (let j = 0; j < p.n; j++) {
          let s = 0;
          for (let q = 0; q < p.k; q++) s += p.a[p.aOffset! + i * p.k + q]! * p.b[j * p.k + q]!;
          ref[i * p.n + j] = s;
        }
      const got = p.c.subarray(p.cOffset ?? 0, (p.cOffset ?? 0) + p.m * p.n);
      expect(relativeError(got, ref)).toBeLessThan(1e-5);
    }
  });

  it('the pure-JS path gives what sgemm gives there', () => {
    gemmConfig.forceJs = true;
    try {
      expectBitwise(segments([40, 0, 77], 64, 32, false, false));
    } finally {
      gemmConfig.forceJs = false;
    }
  });

  it('rejects a list where one product reads what another writes', () => {
    const a = rand(64 * 64);
    const mid = new Float32Array(64 * 64);
    expect(() =>
      sgemmMany([
        { m: 64, n: 64, k: 64, a, b: a, c: mid },
        { m: 64, n: 64, k: 64, a: mid, b: a, c: new Float32Array(64 * 64) },
      ]),
    ).toThrow(/product 1 reads the output of product 0/);
    expect(() => sgemmMany([{ m: 4, n: 4, k: 4, a, b: a, c: new Float32Array(3) }])).toThrow(/c is too short/);
  });
});
