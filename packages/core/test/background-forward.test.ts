// A forward's weight products on the GEMM's worker in the background (inBackground inside a deferring
// scope: weightProductDeferred, DeferredProducts.deferWeight) against weightProduct, bitwise: ragged
// rows and depths, pitched x and y. Where it declines (outside either scope, one thread, a ragged
// width, an operand on the host, the switch off), and where the result becomes visible: an op taking
// the pending output, the scope's end (also when it throws); an operand it reads in place is not
// overwritten first (an in-place write runs it, the free list holds the array back, poisoned after).
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { CpuStorage } from '../src/cpu/backend.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { weightProduct, weightProductDeferred, type WeightProductArgs } from '../src/cpu/gemm/index.js';
import { recycleStorage, setPoisonRecycled, takeF32 } from '../src/cpu/pool.js';
import { isResidentOutput } from '../src/cpu/resident-outputs.js';
import { anyDeferred, deferringScope, finishDeferred, inBackground, isDeferred } from '../src/deferred.js';
import { exec } from '../src/ops/exec.js';
import { Rng } from '../src/rng.js';

const saved = { ...gemmConfig };
afterEach(() => {
  Object.assign(gemmConfig, saved);
  setPoisonRecycled(false);
  T.setGemmThreads(2);
});
afterAll(() => finishDeferred());
const rng = new Rng(2024);
/** A resident array of n uniform values (the free list's engine memory). */
const residentRand = (n: number): Float32Array => {
  const a = takeF32(n);
  expect(isResidentOutput(a)).toBe(true);
  return rng.fillUniform(a, -1, 1) as Float32Array;
};
const bits = (a: Float32Array) => Array.from(new Uint32Array(a.slice().buffer));

/** y = x · Wᵀ with x [m, k] (row pitch ldx) and W [n, k] resident, y a resident NaN-filled array (row pitch ldy). */
function product(m: number, n: number, k: number, xPitch = 0, yPitch = 0): WeightProductArgs {
  const ldx = k + xPitch,
    ldy = n + yPitch;
  const y = takeF32((m - 1) * ldy + n).fill(Number.NaN);
  expect(isResidentOutput(y)).toBe(true);
  return { m, n, k, x: residentRand((m - 1) * ldx + k), ldx, w: residentRand(n * k), y, ldy };
}

/** What weightProduct writes for `p` (into a copy of y). */
function reference(p: WeightProductArgs): Float32Array {
  const y = p.y.slice();
  weightProduct({ ...p, y });
  return y;
}

/** Posts `p` in the background inside a deferring scope; `then` runs while it may still be pending. */
const deferred = (p: WeightProductArgs, then: () => void = () => {}): boolean =>
  deferringScope(() => {
    const posted = inBackground(() => weightProductDeferred(p));
    then();
    return posted;
  });

describe('weightProductDeferred', () => {
  it('bitwise weightProduct: ragged rows and depths, pitched x and y, several products pending at once', () => {
    T.setGemmThreads(2);
    const shapes: [number, number, number, number, number][] = [
      [1024, 64, 128, 0, 0],
      [1024, 128, 64, 0, 0],
      [300, 96, 70, 3, 0],
      [133, 32, 300, 0, 5],
      [513, 256, 96, 2, 8],
    ];
    const ps = shapes.map(([m, n, k, xp, yp]) => product(m, n, k, xp, yp));
    const want = ps.map(reference);
    deferringScope(() => {
      expect(ps.map((p) => inBackground(() => weightProductDeferred(p)))).toEqual(ps.map(() => true));
      expect(anyDeferred()).toBe(true);
    });
    expect(anyDeferred()).toBe(false);
    ps.forEach((p, i) => expect(bits(p.y)).toEqual(bits(want[i]!)));
  });

  it('declines outside inBackground or a deferring scope, on one thread, for a ragged width, a host operand, or switched off', () => {
    T.setGemmThreads(2);
    const p = product(512, 64, 128);
    expect(inBackground(() => weightProductDeferred(p))).toBe(false); // no deferring scope
    expect(deferringScope(() => weightProductDeferred(p))).toBe(false); // not in the background branch
    expect(deferred(product(512, 66, 128))).toBe(false); // y's rows not whole NR tiles
    expect(deferred({ ...p, x: p.x.slice() })).toBe(false); // x on the host
    gemmConfig.deferForward = false;
    expect(deferred(p)).toBe(false);
    gemmConfig.deferForward = true;
    T.setGemmThreads(1);
    expect(deferred(p)).toBe(false);
    expect(anyDeferred()).toBe(false);
  });

  it('the scope finishes what it posted when it ends, and when it throws; an op taking the output finishes it first', () => {
    T.setGemmThreads(2);
    for (const fail of [false, true]) {
      const p = product(1024, 64, 128);
      const want = reference(p);
      const run = () =>
        deferred(p, () => {
          expect(isDeferred(p.y)).toBe(true);
          if (fail) throw new Error('boom');
        });
      if (fail) expect(run).toThrow('boom');
      else expect(run()).toBe(true);
      expect(anyDeferred()).toBe(false);
      expect(bits(p.y)).toEqual(bits(want));
    }
    const p = product(1024, 128, 64);
    const want = reference(p);
    deferred(p, () => {
      const t = new T.Tensor(T.defaultBackend(), new CpuStorage(p.y), [1024, 128], 'f32');
      expect(bits(T.mul(t, 2).rawSync() as Float32Array)).toEqual(bits(want.map((v) => v * 2)));
      expect(anyDeferred()).toBe(false);
    });
  });

  it('an operand read in place is not overwritten first: an in-place write runs the products, the free list holds it back', () => {
    T.setGemmThreads(2);
    const be = T.defaultBackend();
    for (const how of ['scaleInPlace', 'recycle'] as const) {
      const [m, n, k] = [1024, 128, 128];
      const x = residentRand(m * k);
      const w = residentRand(n * k);
      // several products reading x: the worker runs them one by one, so the later ones still wait
      const ps = Array.from({ length: 6 }, () => ({ m, n, k, x, w, y: takeF32(m * n).fill(Number.NaN) }));
      const want = reference(ps[0]!);
      setPoisonRecycled(true);
      deferringScope(() => {
        for (const p of ps) expect(inBackground(() => weightProductDeferred(p))).toBe(true);
        const t = new T.Tensor(be, new CpuStorage(x), [m, k], 'f32');
        if (how === 'scaleInPlace') exec('scaleInPlace', [t, T.full([1], -2)], {});
        else {
          expect(recycleStorage(t.storage, 0)).toBe(true);
          expect(takeF32(m * k).byteOffset).not.toBe(x.byteOffset); // held back while read
        }
      });
      for (const p of ps) expect(bits(p.y)).toEqual(bits(want));
      if (how === 'recycle') {
        const again = takeF32(m * k);
        expect(again).toBe(x);
        expect(again.every(Number.isNaN)).toBe(true); // poisoned when it joined the free list
      }
    }
  });

  it('a Linear forward in the background and its backward: bitwise the forward run at once', () => {
    const run = (background: boolean) => {
      gemmConfig.deferForward = background;
      const r = new Rng(5);
      const param = (shape: number[]) =>
        T.tensor(r.fillUniform(new Float32Array(shape[0]! * shape[1]!), -1, 1) as Float32Array, {
          shape,
        }).requireGrad();
      const x = param([1024, 128]);
      const w1 = param([64, 128]);
      const w2 = param([128, 64]);
      const y = deferringScope(() => {
        const h = inBackground(() => T.linear(x, w1));
        return T.linear(T.silu(h), w2);
      });
      y.square().sum().backward();
      return [y, x.grad!, w1.grad!, w2.grad!].map((t) => bits(t.rawSync() as Float32Array));
    };
    T.setGemmThreads(2);
    const at = run(true);
    const now = run(false);
    at.forEach((b, i) => expect(b).toEqual(now[i]));
  });
});
