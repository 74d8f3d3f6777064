// Forward semantics of the CPU ops against float64 references, dtype handling and clear errors.
import { describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { expectSameBits } from '../src/testing.js';
import { randArray, relErr } from './helpers.js';

const f32 = (shape: number[], seed: number, lo = -1, hi = 1): T.Tensor =>
  T.tensor(
    Float32Array.from(
      randArray(
        shape.reduce((a, b) => a * b, 1),
        seed,
        lo,
        hi,
      ),
    ),
    { shape },
  );

function refMatmul(a: ArrayLike<number>, b: ArrayLike<number>, m: number, n: number, k: number): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) for (let p = 0; p < k; p++) c[i * n + j]! += a[i * k + p]! * b[p * n + j]!;
  return c;
}

describe('elementwise', () => {
  it('broadcasts binary ops like numpy', async () => {
    const a = f32([2, 3, 1], 1);
    const b = f32([4], 2);
    const y = T.add(a, b);
    expect(y.shape).toEqual([2, 3, 4]);
    const av = a.dataSync();
    const bv = b.dataSync();
    const yv = await y.data();
    for (let i = 0; i < 6; i++) for (let j = 0; j < 4; j++) expect(yv[i * 4 + j]).toBeCloseTo(av[i]! + bv[j]!, 6);
  });

  it('computes every unary op against Math in f64', () => {
    const x = T.tensor(randArray(50, 3, 0.1, 3), { dtype: 'f64' });
    const xs = x.dataSync();
    const cases: [T.Tensor, (v: number) => number][] = [
      [T.exp(x), Math.exp],
      [T.log(x), Math.log],
      [T.sqrt(x), Math.sqrt],
      [T.rsqrt(x), (v) => 1 / Math.sqrt(v)],
      [T.sigmoid(x), (v) => 1 / (1 + Math.exp(-v))],
      [T.silu(x), (v) => v / (1 + Math.exp(-v))],
      [T.tanh(x), Math.tanh],
      [T.neg(x), (v) => -v],
      [T.abs(T.neg(x)), Math.abs],
      [T.recip(x), (v) => 1 / v],
      [T.square(x), (v) => v * v],
    ];
    for (const [t, f] of cases) expect(relErr(t.dataSync(), Array.from(xs, f))).toBeLessThan(1e-15);
  });

  it('compares, selects and casts', () => {
    const a = T.tensor([1, 5, 3]);
    const b = T.tensor([2, 5, 1]);
    expect(Array.from(T.lt(a, b).dataSync())).toEqual([1, 0, 0]);
    expect(T.eq(a, b).dtype).toBe('bool');
    expect(Array.from(T.where(T.ge(a, b), a, b).dataSync())).toEqual([2, 5, 3]);
    expect(Array.from(T.cast(T.tensor([1.7, -1.7, 2.5]), 'i32').dataSync())).toEqual([1, -1, 2]);
    expect(Array.from(T.maximum(T.tensor([1, NaN]), T.tensor([2, 0])).dataSync())).toEqual([2, NaN]);
  });

  it('stores f16 and bf16 as bits and computes in f32', () => {
    const x = T.tensor([1, 1 / 3, 1000.5, -2.75], { dtype: 'bf16' });
    expect(x.rawSync()).toBeInstanceOf(Uint16Array);
    expect(Array.from(x.dataSync())).toEqual([1, 0.333984375, 1000, -2.75]);
    const h = T.tensor([1, 1 / 3, 65504, -2.75], { dtype: 'f16' });
    expect(Array.from(h.dataSync())).toEqual([1, 0.333251953125, 65504, -2.75]);
    const s = T.add(x, x);
    expect(s.dtype).toBe('bf16');
    expect(Array.from(s.dataSync())).toEqual([2, 0.66796875, 2000, -5.5]);
    expect(T.cast(h, 'f32').dataSync()[1]).toBe(0.333251953125);
  });

  it('rejects mismatched dtypes and shapes with clear errors', () => {
    expect(() => T.add(T.tensor([1]), T.tensor([1], { dtype: 'f64' }))).toThrow(/dtypes differ \(f32 and f64\)/);
    expect(() => T.add(T.zeros([2, 3]), T.zeros([4]))).toThrow(/cannot be broadcast/);
    expect(() => T.exp(T.tensor([1], { dtype: 'i32' }))).toThrow(/needs a float tensor/);
    expect(() => T.add(T.fromRaw('fp8-e4m3', [1], new Uint8Array(1)), 1)).toThrow(/storage-only/);
  });
});

describe('reductions and matmul', () => {
  it('reduces over axes', async () => {
    const x = T.tensor([
      [1, 9, 3],
      [4, 2, 6],
    ]);
    expect(await T.sum(x, 0).toArray()).toEqual([5, 11, 9]);
    expect(await T.mean(x, 1, true).toArray()).toEqual([[13 / 3], [4]].map((r) => r.map((v) => Math.fround(v))));
    expect(await T.max(x, 1).toArray()).toEqual([9, 6]);
    expect(await T.argmax(x, 0).toArray()).toEqual([1, 0, 1]);
    expect(await T.min(x).item()).toBe(1);
    expect(await T.argmax(T.tensor([3, 7, 7])).item()).toBe(1);
  });

  it('matmul matches a float64 reference on ragged and batched shapes', () => {
    for (const [m, n, k] of [
      [1, 1, 1],
      [3, 5, 7],
      [17, 33, 65],
      [64, 64, 64],
    ] as const) {
      const a = f32([m, k], m + 10);
      const b = f32([k, n], n + 20);
      expect(relErr(T.matmul(a, b).dataSync(), refMatmul(a.dataSync(), b.dataSync(), m, n, k))).toBeLessThan(1e-6);
      const bt = T.transpose(b);
      expect(
        relErr(T.matmul(a, bt, { transB: true }).dataSync(), refMatmul(a.dataSync(), b.dataSync(), m, n, k)),
      ).toBeLessThan(1e-6);
    }
    const a = f32([2, 1, 3, 4], 30);
    const b = f32([3, 4, 5], 31);
    const c = T.matmul(a, b);
    expect(c.shape).toEqual([2, 3, 3, 5]);
    const av = a.dataSync();
    const bv = b.dataSync();
    const ref = refMatmul(av.subarray(12, 24), bv.subarray(20 * 2, 20 * 3), 3, 5, 4);
    expect(relErr(c.dataSync().subarray(15 * 5, 15 * 6), ref)).toBeLessThan(1e-6);
    expect(() => T.matmul(T.zeros([2, 3]), T.zeros([4, 5]))).toThrow(/inner dimensions differ/);
  });
});

describe('nn functions', () => {
  it('softmax, log-softmax and rmsnorm match float64 formulas', () => {
    const x = f32([3, 7], 40, -3, 3);
    const xs = x.dataSync();
    const sm = T.softmax(x).dataSync();
    const lsm = T.logSoftmax(x).dataSync();
    const w = f32([7], 41);
    const rn = T.rmsNorm(x, w, 1e-6).dataSync();
    for (let r = 0; r < 3; r++) {
      const row = Array.from(xs.subarray(r * 7, r * 7 + 7));
      const m = Math.max(...row);
      const z = row.reduce((s, v) => s + Math.exp(v - m), 0);
      const ms = row.reduce((s, v) => s + v * v, 0) / 7;
      for (let j = 0; j < 7; j++) {
        expect(sm[r * 7 + j]).toBeCloseTo(Math.exp(row[j]! - m) / z, 6);
        expect(lsm[r * 7 + j]).toBeCloseTo(row[j]! - m - Math.log(z), 5);
        expect(rn[r * 7 + j]).toBeCloseTo((row[j]! / Math.sqrt(ms + 1e-6)) * w.dataSync()[j]!, 5);
      }
    }
  });

  it('cross-entropy with ignored targets and range checks', async () => {
    const logits = T.tensor([
      [2, 0, 0],
      [0, 0, 0],
      [1, 2, 3],
    ]);
    const loss = await T.crossEntropy(logits, T.tensor([0, -100, 2], { dtype: 'i32' })).item();
    const l0 = -(2 - Math.log(Math.exp(2) + 2));
    const l2 = -(3 - Math.log(Math.exp(1) + Math.exp(2) + Math.exp(3)));
    expect(loss).toBeCloseTo((l0 + l2) / 2, 6);
    expect(() => T.crossEntropy(logits, T.tensor([0, 3, 1], { dtype: 'i32' }))).toThrow(
      /target 3 at position 1 is outside \[0, 3\)/,
    );
  });

  it('causal mask lines up cached queries with the last keys', async () => {
    expect(await T.causalMask(2, 3).toArray()).toEqual([
      [0, 0, -Infinity],
      [0, 0, 0],
    ]);
    expect(await T.causalMask(3).toArray()).toEqual([
      [0, -Infinity, -Infinity],
      [0, 0, -Infinity],
      [0, 0, 0],
    ]);
  });
});

describe('indexing and layout', () => {
  it('gathers, scatters, concatenates and slices', async () => {
    const w = T.tensor([
      [1, 2],
      [3, 4],
      [5, 6],
    ]);
    expect(await T.embedding(T.tensor([[2, 0]], { dtype: 'i32' }), w).toArray()).toEqual([
      [
        [5, 6],
        [1, 2],
      ],
    ]);
    expect(await T.indexAdd(T.zeros([3, 2]), 0, T.tensor([2, 2], { dtype: 'i32' }), T.ones([2, 2])).toArray()).toEqual([
      [0, 0],
      [0, 0],
      [2, 2],
    ]);
    expect(await T.concat([w, w], 1).toArray()).toEqual([
      [1, 2, 1, 2],
      [3, 4, 3, 4],
      [5, 6, 5, 6],
    ]);
    expect(await T.slice(w, [1], [-1]).toArray()).toEqual([[3, 4]]);
    expect(await T.permute(T.reshape(T.arange(6, { dtype: 'f32' }), [1, 2, 3]), [2, 0, 1]).toArray()).toEqual([
      [[0, 3]],
      [[1, 4]],
      [[2, 5]],
    ]);
    expect(await T.pad(T.tensor([1, 2]), [1], [2], 9).toArray()).toEqual([9, 1, 2, 9, 9]);
    expect(await T.cumsum(T.tensor([1, 2, 3])).toArray()).toEqual([1, 3, 6]);
    expect(() => T.embedding(T.tensor([3], { dtype: 'i32' }), w)).toThrow(/index 3 is out of range \[0, 3\)/);
    expect(() => T.slice(w, [0], [4])).toThrow(/out of range for axis 0 of size 3/);
    expect(() => T.reshape(w, [4, 2])).toThrow(/cannot reshape \[3, 2\]/);
  });

  it('top-k is descending with lowest index first on ties', async () => {
    const [v, i] = T.topk(
      T.tensor([
        [1, 3, 3, 2],
        [0, -1, 5, 5],
      ]),
      3,
    );
    expect(await v.toArray()).toEqual([
      [3, 3, 2],
      [5, 5, 0],
    ]);
    expect(await i.toArray()).toEqual([
      [1, 2, 3],
      [2, 3, 0],
    ]);
    expect(() => T.topk(T.zeros([2, 3]), 4)).toThrow(/k = 4/);
  });
});

describe('autograd mechanics', () => {
  it('accumulates gradients across backward calls and respects noGrad', () => {
    const w = T.tensor([1, 2, 3]).requireGrad();
    T.sum(T.mul(w, w)).backward();
    T.sum(T.mul(w, 3)).backward();
    expect(Array.from(w.grad!.dataSync())).toEqual([5, 7, 9]);
    const y = T.noGrad(() => T.mul(w, 2));
    expect(y.requiresGrad).toBe(false);
    expect(() => y.sum().backward()).toThrow(/does not require grad/);
  });
});

describe('rng', () => {
  it('is seeded and reproducible with sane moments', () => {
    const a = Array.from(T.randn([10000], { seed: 7 }).dataSync());
    const b = T.randn([10000], { seed: 7 }).dataSync();
    expectSameBits(a, b, 'randn, seed 7');
    const mean = a.reduce((s, v) => s + v, 0) / a.length;
    const varc = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length;
    expect(Math.abs(mean)).toBeLessThan(0.05);
    expect(Math.abs(varc - 1)).toBeLessThan(0.05);
    const ints = Array.from(T.randint([1000], 3, 7, { seed: 1 }).dataSync());
    expect(Math.min(...ints)).toBe(3);
    expect(Math.max(...ints)).toBe(6);
    expect(T.randn([3], { seed: 8 }).dataSync()).not.toEqual(T.randn([3], { seed: 7 }).dataSync());
  });
});
