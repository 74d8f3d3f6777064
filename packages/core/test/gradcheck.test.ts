// Every differentiable op's gradient against central finite differences in float64.
import { describe, it } from 'vitest';
import * as T from '../src/index.js';
import { gradcheck, rand64 } from './helpers.js';

const pos = (shape: number[], seed: number): T.Tensor => rand64(shape, seed, 0.5, 2);

describe('gradients vs finite differences (f64)', () => {
  it('binary arithmetic with broadcasting', () => {
    gradcheck('add', T.add, [rand64([3, 4], 1), rand64([4], 2)]);
    gradcheck('sub', T.sub, [rand64([2, 1, 5], 3), rand64([3, 1], 4)]);
    gradcheck('mul', T.mul, [rand64([3, 4], 5), rand64([3, 1], 6)]);
    gradcheck('div', T.div, [rand64([2, 3], 7), pos([3], 8)]);
    gradcheck('pow', T.pow, [pos([2, 3], 9), rand64([2, 3], 10)]);
    gradcheck('pow scalar', (x) => T.pow(x, 3), [rand64([5], 11)]);
    gradcheck('maximum', T.maximum, [rand64([4, 3], 12), rand64([4, 3], 13)]);
    gradcheck('minimum', T.minimum, [rand64([4, 3], 14), rand64([3], 15)]);
    gradcheck('scalar lhs', (x) => T.sub(2, x), [rand64([3], 16)]);
  });

  it('unary math', () => {
    const x = rand64([3, 5], 20);
    for (const [n, f] of Object.entries({
      neg: T.neg,
      exp: T.exp,
      sigmoid: T.sigmoid,
      silu: T.silu,
      tanh: T.tanh,
      abs: T.abs,
      sin: T.sin,
      cos: T.cos,
      square: T.square,
      relu: T.relu,
    })) {
      gradcheck(n, f, [x]);
    }
    const p = pos([3, 5], 21);
    for (const [n, f] of Object.entries({ log: T.log, sqrt: T.sqrt, rsqrt: T.rsqrt, recip: T.recip }))
      gradcheck(n, f, [p]);
  });

  it('where and cast', () => {
    const c = T.gt(rand64([3, 4], 30), 0);
    gradcheck('where', (a, b) => T.where(c, a, b), [rand64([3, 4], 31), rand64([4], 32)]);
    gradcheck('cast f64→f32→f64', (x) => T.cast(T.cast(x, 'f32'), 'f64'), [rand64([6], 33)], { h: 1e-2, tol: 1e-4 });
  });

  it('reductions', () => {
    const x = rand64([3, 4, 5], 40);
    gradcheck('sum all', (t) => T.sum(t), [x]);
    gradcheck('sum axes', (t) => T.sum(t, [0, 2]), [x]);
    gradcheck('sum keepdims', (t) => T.sum(t, 1, true), [x]);
    gradcheck('mean', (t) => T.mean(t, -1), [x]);
    gradcheck('max', (t) => T.max(t, 1), [x]);
    gradcheck('min keepdims', (t) => T.min(t, 2, true), [x]);
    gradcheck('max all', (t) => T.max(t), [x]);
  });

  it('matmul: transposes and batch broadcasting', () => {
    for (const transA of [false, true])
      for (const transB of [false, true]) {
        const a = rand64(transA ? [2, 5, 3] : [2, 3, 5], 50);
        const b = rand64(transB ? [4, 5] : [5, 4], 51);
        gradcheck(`matmul tA=${transA} tB=${transB}`, (x, y) => T.matmul(x, y, { transA, transB }), [a, b]);
      }
    gradcheck('batched matmul broadcast', (x, y) => T.matmul(x, y), [rand64([2, 1, 3, 4], 52), rand64([3, 4, 2], 53)]);
    gradcheck('linear', (x, w, b) => T.linear(x, w, b), [rand64([3, 4], 54), rand64([5, 4], 55), rand64([5], 56)]);
  });

  it('softmax, log-softmax, rmsnorm, cross-entropy', () => {
    gradcheck('softmax', (t) => T.softmax(t), [rand64([3, 6], 60, -2, 2)]);
    gradcheck('softmax axis 0', (t) => T.softmax(t, 0), [rand64([4, 3], 61, -2, 2)]);
    gradcheck('logSoftmax', (t) => T.logSoftmax(t), [rand64([2, 3, 5], 62, -2, 2)]);
    gradcheck('rmsNorm', (x, w) => T.rmsNorm(x, w, 1e-6), [rand64([3, 8], 63), rand64([8], 64)]);
    const targets = T.tensor([2, -100, 0, 4], { dtype: 'i32' });
    gradcheck('crossEntropy mean', (l) => T.crossEntropy(l, targets), [rand64([4, 5], 65, -2, 2)]);
    gradcheck('crossEntropy none', (l) => T.crossEntropy(l, targets, { reduction: 'none' }), [
      rand64([4, 5], 66, -2, 2),
    ]);
  });

  it('indexing: gather, index-add, take/scatter along, topk, cumsum', () => {
    const ids = T.tensor(
      [
        [2, 0],
        [2, 3],
      ],
      { dtype: 'i32' },
    );
    gradcheck('embedding', (w) => T.embedding(ids, w), [rand64([4, 3], 70)]);
    gradcheck('indexSelect axis 1', (x) => T.indexSelect(x, T.tensor([1, 1, 0], { dtype: 'i32' }), 1), [
      rand64([2, 3, 2], 71),
    ]);
    gradcheck('indexAdd', (x, s) => T.indexAdd(x, 0, T.tensor([1, 0, 1], { dtype: 'i32' }), s), [
      rand64([3, 2], 72),
      rand64([3, 2], 73),
    ]);
    const along = T.tensor(
      [
        [0, 2, 2],
        [1, 1, 0],
      ],
      { dtype: 'i32' },
    );
    gradcheck('takeAlong', (x) => T.takeAlong(x, along, 1), [rand64([2, 4], 74)]);
    gradcheck('scatterAlong', (x, s) => T.scatterAlong(x, along, s, 1), [rand64([2, 4], 75), rand64([2, 3], 76)]);
    gradcheck('topk values', (x) => T.topk(x, 3)[0], [rand64([3, 6], 77)]);
    gradcheck('cumsum', (x) => T.cumsum(x, 1), [rand64([3, 4], 78)]);
    gradcheck('cumsum reverse', (x) => T.cumsum(x, 0, true), [rand64([3, 4], 79)]);
  });

  it('shape ops', () => {
    const x = rand64([2, 3, 4], 80);
    gradcheck('reshape', (t) => T.reshape(t, [6, 4]), [x]);
    gradcheck('permute', (t) => T.permute(t, [2, 0, 1]), [x]);
    gradcheck('transpose', (t) => T.transpose(t, 0, 2), [x]);
    gradcheck('expand 4d', (t) => T.expand(t, [2, 2, 3, 4]), [rand64([1, 3, 1], 81)]);
    gradcheck('expand', (t) => T.expand(t, [5, 3, 4]), [rand64([3, 1], 82)]);
    gradcheck('slice', (t) => T.slice(t, [0, 1, 1], [2, 3, -1]), [x]);
    gradcheck('narrow', (t) => T.narrow(t, 2, 1, 2), [x]);
    gradcheck('pad', (t) => T.pad(t, [1, 0, 2], [0, 1, 1], 0.5), [x]);
    gradcheck('concat', (a, b) => T.concat([a, b], 1), [rand64([2, 2, 3], 83), rand64([2, 4, 3], 84)]);
    gradcheck('stack', (a, b) => T.stack([a, b], 1), [rand64([2, 3], 85), rand64([2, 3], 86)]);
    gradcheck('split', (t) => T.mul(T.split(t, [1, 2], 1)[1]!, 2), [x]);
    gradcheck('squeeze/unsqueeze', (t) => T.unsqueeze(T.squeeze(t, 0), 2), [rand64([1, 3, 2], 87)]);
  });
});
