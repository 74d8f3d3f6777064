// scatterAdd on f32 / f64 (the embedding backward's kernel): the touched-rows path equals the generic
// float64 algorithm bit for bit — x widened, every source row added in index order, rounded once —
// on ragged shapes with repeated indices, along a leading and a middle axis.
import { describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { Rng } from '../src/index.js';
import { recycleStorage } from '../src/cpu/pool.js';

/** The generic algorithm, written out: float64 accumulation from x, in index order, rounded once. */
function reference(
  x: Float32Array | Float64Array,
  shape: number[],
  axis: number,
  ids: Int32Array,
  src: ArrayLike<number>,
) {
  const outer = shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const len = shape[axis]!;
  const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const out = Float64Array.from(x);
  for (let o = 0; o < outer; o++)
    for (let j = 0; j < ids.length; j++)
      for (let i = 0; i < inner; i++) out[(o * len + ids[j]!) * inner + i]! += src[(o * ids.length + j) * inner + i]!;
  return x instanceof Float32Array ? Float32Array.from(out) : out;
}

const bytes = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('scatterAdd (f32 / f64)', () => {
  const cases: [number[], number, number][] = [
    [[37, 5], 0, 23], // an embedding gradient: rows 0..36, 23 ids with repeats
    [[3, 11, 7], 1, 13], // a middle axis
    [[129, 1], 0, 300], // many repeats of few rows
    [[6, 4], 0, 0], // no ids: x unchanged
  ];
  for (const dtype of ['f32', 'f64'] as const)
    for (const [shape, axis, n] of cases)
      it(`${dtype} [${shape.join(', ')}] axis ${axis}, ${n} ids`, async () => {
        const rng = new Rng(shape.length * 100 + n);
        const size = shape.reduce((a, b) => a * b, 1);
        const make = (length: number, f: () => number): Float32Array | Float64Array =>
          dtype === 'f32' ? Float32Array.from({ length }, f) : Float64Array.from({ length }, f);
        // magnitudes far apart, so the order and the precision of the sums show in the last bits
        const x = make(size, () => rng.normal() * 1e3);
        const before = x.slice();
        const ids = Int32Array.from({ length: n }, () => rng.integer(0, shape[axis]!));
        const srcShape = shape.map((d, i) => (i === axis ? n : d));
        const src = make(
          srcShape.reduce((a, b) => a * b, 1),
          () => rng.normal() * 10 ** rng.integer(-4, 3),
        );
        const got = T.indexAdd(
          T.tensor(x, { shape, dtype }),
          axis,
          T.tensor(ids, { shape: [n], dtype: 'i32' }),
          T.tensor(src, { shape: srcShape, dtype }),
        );
        expect(bytes(await got.raw()).equals(bytes(reference(x, shape, axis, ids, src)))).toBe(true);
        // x itself is left as it was
        expect(bytes(x).equals(bytes(before))).toBe(true);
      });

  it("the embedding's gradient (x known zero, a recycled output with stale values) equals the generic sum", async () => {
    const [vocab, dim] = [4096 + 3, 2]; // past the free list's smallest size
    const rng = new Rng(7);
    const ids = Int32Array.from({ length: 50 }, () => rng.integer(0, 20));
    const g = Float32Array.from({ length: 50 * dim }, () => rng.normal());
    // a stale buffer of the gradient's size waits in the free list
    recycleStorage(new T.CpuStorage(T.takeF32(vocab * dim).fill(123)), 0);
    const w = T.zeros([vocab, dim]).requireGrad();
    T.sum(
      T.mul(T.embedding(T.tensor(ids, { shape: [50], dtype: 'i32' }), w), T.tensor(g, { shape: [50, dim] })),
    ).backward();
    const want = reference(new Float32Array(vocab * dim), [vocab, dim], 0, ids, g);
    expect(bytes(await w.grad!.raw()).equals(bytes(want))).toBe(true);
  });

  it("indexSelect's backward hands its zeros back to the free list, and its gradients are unchanged", async () => {
    // an odd size nothing else in this file takes; poison mode marks what the free list hands back
    const [rows, dim] = [997, 13];
    const rng = new Rng(11);
    const ids = Int32Array.from({ length: 300 }, () => rng.integer(0, rows));
    const g = Float32Array.from({ length: 300 * dim }, () => rng.normal());
    const was = T.setPoisonRecycled(true);
    try {
      for (let pass = 0; pass < 2; pass++) {
        const x = T.zeros([rows, dim]).requireGrad();
        const y = T.indexSelect(x, T.tensor(ids, { shape: [300], dtype: 'i32' }), 0);
        T.sum(T.mul(y, T.tensor(g, { shape: [300, dim] }))).backward();
        const want = reference(new Float32Array(rows * dim), [rows, dim], 0, ids, g);
        expect(bytes(await x.grad!.raw()).equals(bytes(want))).toBe(true);
      }
      // the zeros' buffer waits in the free list (poisoned: NaN), not a fresh array (zeros)
      expect(Number.isNaN(T.takeF32(rows * dim)[0])).toBe(true);
    } finally {
      T.setPoisonRecycled(was);
    }
  });

  it('an out-of-range index is refused', () => {
    const x = T.zeros([4, 2]);
    expect(() => T.indexAdd(x, 0, T.tensor([1, 4], { dtype: 'i32' }), T.ones([2, 2]))).toThrow(
      /scatterAdd: index 4 is out of range \[0, 4\)/,
    );
  });
});
