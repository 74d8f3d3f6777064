// Products deferred to the GEMM's workers (sgemmDeferred: a backward pass's weight gradients) against
// one sgemm call per product, bitwise: ragged shapes, every transpose, operands at offsets inside shared
// arrays, pitched rows; more products than the background table holds and a staging block that must
// grow (both collect a round early); operands reused by the caller right after posting. And where the
// results become visible: an op taking a pending output as its input, a read, the free list and the
// end of a backward pass each finish them first; before that the output is untouched.
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { CpuStorage } from '../src/cpu/backend.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { type GemmArgs, sgemm, sgemmDeferred } from '../src/cpu/gemm/index.js';
import { MAX_BACKGROUND } from '../src/cpu/gemm/worker-pool.js';
import { recycleStorage, takeF32 } from '../src/cpu/pool.js';
import { anyDeferred, deferringPass, finishDeferred, isDeferred } from '../src/deferred.js';
import { Rng } from '../src/rng.js';

const saved = { ...gemmConfig };
afterAll(() => {
  finishDeferred();
  Object.assign(gemmConfig, saved);
});
const rng = new Rng(777);
const rand = (len: number): Float32Array => rng.fillUniform(new Float32Array(len), -1, 1) as Float32Array;
const same = (x: Float32Array, y: Float32Array) =>
  expect(
    Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(y.buffer, y.byteOffset, y.byteLength)),
  ).toBe(true);

/** A product of the given shape and transposes, its operands at offsets inside larger arrays, C in a fresh NaN-filled array. */
function product(m: number, n: number, k: number, transA: boolean, transB: boolean, pitch = 0): GemmArgs {
  const [ar, ac] = transA ? [k, m] : [m, k];
  const [br, bc] = transB ? [n, k] : [k, n];
  const lda = ac + pitch;
  const aOffset = 5;
  const bOffset = 3;
  return {
    m,
    n,
    k,
    a: rand(aOffset + ar * lda),
    aOffset,
    lda,
    transA,
    b: rand(bOffset + br * bc),
    bOffset,
    transB,
    c: new Float32Array(m * n).fill(Number.NaN),
  };
}

/** What one sgemm call writes for `p` (into a copy of its C). */
function reference(p: GemmArgs): Float32Array {
  const c = p.c.slice();
  sgemm({ ...p, c });
  return c;
}

const shapes: [number, number, number][] = [
  [320, 128, 1024],
  [64, 128, 264],
  [37, 29, 300],
  [130, 66, 70],
  [128, 96, 1024],
];

describe('sgemmDeferred', () => {
  it('declines outside a backward pass and on one thread: nothing posted', () => {
    T.setGemmThreads(2);
    expect(sgemmDeferred(product(128, 96, 1024, true, false))).toBe(false);
    T.setGemmThreads(1);
    deferringPass(() => expect(sgemmDeferred(product(128, 96, 1024, true, false))).toBe(false));
    expect(anyDeferred()).toBe(false);
  });

  it('a pass finishes what it deferred when it returns, and when it throws', () => {
    T.setGemmThreads(2);
    for (const fail of [false, true]) {
      const p = product(320, 128, 1024, true, false);
      const want = reference(p);
      const pass = () =>
        deferringPass(() => {
          expect(sgemmDeferred(p)).toBe(true);
          if (fail) throw new Error('pass failed');
        });
      if (fail) expect(pass).toThrow('pass failed');
      else pass();
      expect(anyDeferred()).toBe(false);
      same(p.c, want);
    }
  });

  it('2 threads: each product bitwise one sgemm call; C untouched until finished; operands reusable at once', () => {
    T.setGemmThreads(2);
    for (const transA of [false, true])
      for (const transB of [false, true])
        for (const [m, n, k] of shapes) {
          const p = product(m, n, k, transA, transB, (m + k) % 3);
          const want = reference(p);
          deferringPass(() => {
            expect(sgemmDeferred(p)).toBe(true);
            expect(isDeferred(p.c)).toBe(true);
            // The caller may overwrite its operands now: they were copied when posted.
            p.a.fill(7);
            p.b.fill(-3);
            expect(p.c.every(Number.isNaN)).toBe(true);
            finishDeferred();
            expect(anyDeferred()).toBe(false);
          });
          same(p.c, want);
        }
  });

  it('more products than the background table holds, and a staging block that grows, in one round', () => {
    T.setGemmThreads(2);
    const list: GemmArgs[] = [];
    // Small ones first (the block is sized to them), then large ones (it must grow), past MAX_BACKGROUND.
    for (let i = 0; i < MAX_BACKGROUND + 40; i++) {
      const big = i > 100 && i % 10 === 0;
      list.push(
        big ? product(256, 200, 900, true, false) : product(64 + (i % 7), 72 + (i % 5), 80 + (i % 11), true, false),
      );
    }
    const want = list.map(reference);
    deferringPass(() => {
      for (const p of list) expect(sgemmDeferred(p)).toBe(true);
      // The first round was collected early (table full): those outputs are written and no longer pending.
      same(list[0]!.c, want[0]!);
      expect(isDeferred(list[0]!.c)).toBe(false);
      expect(isDeferred(list.at(-1)!.c)).toBe(true);
    });
    list.forEach((p, i) => same(p.c, want[i]!));
  });

  it('the staging block grows to hold a whole pass: the next pass of the same products is one round', () => {
    T.setGemmThreads(2);
    const list = Array.from({ length: 40 }, (_, i) => product(300 + 4 * i, 128, 1024 - 8 * i, true, false));
    const want = list.map(reference);
    for (const round of [1, 2, 3])
      deferringPass(() => {
        for (const p of list) {
          p.c.fill(Number.NaN);
          expect(sgemmDeferred(p)).toBe(true);
        }
        // From the second pass on nothing was collected early.
        if (round > 1) expect(list.every((p) => isDeferred(p.c))).toBe(true);
      });
    list.forEach((p, i) => same(p.c, want[i]!));
  });

  it('an op taking a pending output, a read and the free list each finish it first', () => {
    T.setGemmThreads(2);
    const be = T.defaultBackend();
    for (const how of ['op', 'read', 'recycle'] as const) {
      const p = product(128, 96, 1024, true, false);
      const want = reference(p);
      p.c = takeF32(128 * 96).fill(0);
      deferringPass(() => {
        expect(sgemmDeferred(p)).toBe(true);
        const t = new T.Tensor(be, new CpuStorage(p.c), [128, 96], 'f32');
        if (how === 'op') {
          const doubled = T.mul(t, 2).rawSync() as Float32Array;
          same(
            doubled,
            want.map((x) => x * 2),
          );
        } else if (how === 'read') same(t.rawSync() as Float32Array, want);
        else {
          recycleStorage(t.storage, 0);
          same(p.c, want);
        }
        expect(anyDeferred()).toBe(false);
      });
    }
  });

  it("a backward pass returns with its weight gradients finished, bitwise one thread's", () => {
    const run = (threads: number) => {
      T.setGemmThreads(threads);
      const r = new Rng(99);
      const x = T.tensor(r.fillUniform(new Float32Array(512 * 96), -1, 1) as Float32Array, {
        shape: [512, 96],
      }).requireGrad();
      const w = T.tensor(r.fillUniform(new Float32Array(160 * 96), -1, 1) as Float32Array, {
        shape: [160, 96],
      }).requireGrad();
      const v = T.tensor(r.fillUniform(new Float32Array(64 * 160), -1, 1) as Float32Array, {
        shape: [64, 160],
      }).requireGrad();
      T.linear(T.linear(x, w), v).sum().backward();
      expect(anyDeferred()).toBe(false);
      return [w.grad!, v.grad!, x.grad!].map((g) => (g.rawSync() as Float32Array).slice());
    };
    const one = run(1);
    const two = run(2);
    one.forEach((g, i) => same(two[i]!, g));
  });
});
