// An inference step's dead kernel outputs handed back to the engine when the step ends
// (releasingStepOutputs): the outputs made inside and not reachable from the result or the kept roots
// are released (poisoned in poison mode: a reader that escaped sees NaN), everything reachable — the
// result, tensors and raw views held by the roots, outputs made before the scope — keeps its values,
// gradient recording and a throw release nothing, nested scopes pass what they keep outward, and
// keptOnHost moves a result out of the engine's memory (into an array a disposed copy of its length left).
import { afterEach, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { expectSameBits } from '../src/testing.js';
import type { CpuStorage } from '../src/cpu/backend.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { setGemmThreads } from '../src/cpu/gemm/index.js';
import { isResidentOutput, residentOutputStats } from '../src/cpu/resident-outputs.js';
import { keptOnHost, releasingStepOutputs } from '../src/cpu/step-outputs.js';
import { Rng } from '../src/rng.js';

const saved = { ...gemmConfig };
afterEach(() => Object.assign(gemmConfig, saved));
const rng = new Rng(77);
const N = 8192 + 37; // past the free list's lower bound: outputs land in the engine memory
const rand = (n = N) => T.tensor(rng.fillUniform(new Float32Array(n), -1, 1) as Float32Array, { shape: [n] });
const raw = (t: T.Tensor) => (t.storage as CpuStorage).data as Float32Array;
const live = () => residentOutputStats().blocks;

describe('releasingStepOutputs', () => {
  it('releases the outputs a step made that nothing kept uses; the result keeps its values', () => {
    setGemmThreads(2);
    const [a, b] = [rand(), rand()];
    const before = live();
    let dead: Float32Array | null = null;
    const out = T.noGrad(() =>
      releasingStepOutputs(
        () => {
          const s = T.add(a, b);
          dead = raw(s);
          expect(isResidentOutput(dead)).toBe(true);
          return T.mul(s, b);
        },
        { poison: true },
      ),
    );
    expect(live()).toBe(before + 1); // the result only
    expect(Number.isNaN(dead![0])).toBe(true); // poisoned when released
    const [ad, bd, od] = [raw(a), raw(b), raw(out)];
    for (let i = 0; i < N; i++) expect(od[i]).toBe(Math.fround(Math.fround(ad[i]! + bd[i]!) * bd[i]!));
  });

  it('keeps what the roots reach — tensors, reshaped views, raw subarrays in Maps and arrays — and outputs made before the scope', () => {
    const [a, b] = [rand(), rand()];
    const earlier = T.add(a, b); // made before the scope: not its to release
    const earlierBits = raw(earlier).slice();
    const holder: { m: Map<string, unknown>; list: unknown[]; t?: T.Tensor } = { m: new Map(), list: [] };
    const made: Float32Array[] = [];
    const before = live();
    T.noGrad(() =>
      releasingStepOutputs(
        () => {
          const x = T.sub(earlier, b);
          const y = T.mul(a, b);
          const z = T.add(x, y);
          const w = T.mul(z, a);
          made.push(raw(x), raw(y), raw(z), raw(w));
          holder.t = T.reshape(x, [1, N]); // a view of x's storage
          holder.m.set('y', raw(y).subarray(100, 200)); // a raw view in a Map
          holder.list.push([raw(z)]); // nested in arrays
          return null;
        },
        { keep: [holder], poison: true },
      ),
    );
    const [x, y, z, w] = made;
    expect(live()).toBe(before + 3); // x, y, z kept; w released
    expect(Number.isNaN(w![0])).toBe(true);
    expect([x, y, z].every((v) => !Number.isNaN(v![0]) && isResidentOutput(v!))).toBe(true);
    expectSameBits(raw(earlier), earlierBits, 'earlier');
  });

  it('releases nothing with gradient recording on, or when the step throws', () => {
    const [a, b] = [rand(), rand()];
    const before = live();
    const r = releasingStepOutputs(
      () => {
        T.add(a, b);
        return T.mul(a, b);
      },
      { poison: true },
    );
    expect(live()).toBe(before + 2);
    expect(Number.isNaN(raw(r)[0])).toBe(false);
    let made: Float32Array | null = null;
    expect(() =>
      T.noGrad(() =>
        releasingStepOutputs(
          () => {
            made = raw(T.add(a, b));
            throw new Error('step failed');
          },
          { poison: true },
        ),
      ),
    ).toThrow('step failed');
    expect(live()).toBe(before + 3);
    expect(Number.isNaN(made![0])).toBe(false);
  });

  it('nested: an inner scope’s result is the outer scope’s to release; what its roots hold, nobody’s', () => {
    const [a, b] = [rand(), rand()];
    const before = live();
    let inner: Float32Array | null = null;
    const module: { lastScores?: T.Tensor } = {}; // a module the inner scope runs, storing an output
    const out = T.noGrad(() =>
      releasingStepOutputs(
        () => {
          const h = releasingStepOutputs(
            () => {
              module.lastScores = T.sub(a, b);
              return T.add(T.mul(a, b), b); // releases the product
            },
            { keep: [module], poison: true },
          );
          expect(live()).toBe(before + 2);
          inner = raw(h);
          return T.sub(h, a);
        },
        { poison: true }, // the outer's roots do not reach the module
      ),
    );
    expect(live()).toBe(before + 2); // out and the module's: the inner result was dead at the outer's end
    expect(Number.isNaN(inner![0])).toBe(true);
    expect(Number.isNaN(raw(out)[0])).toBe(false);
    expect(Number.isNaN(raw(module.lastScores!)[0])).toBe(false);
    const [ad, bd, sd] = [raw(a), raw(b), raw(module.lastScores!)];
    for (let i = 0; i < N; i++) expect(sd[i]).toBe(Math.fround(ad[i]! - bd[i]!));
  });

  it('keptOnHost: an output block’s values copied to host memory (the block then released), other tensors as they are', () => {
    const [a, b] = [rand(), rand()];
    const before = live();
    let block: Float32Array | null = null;
    const kept = T.noGrad(() =>
      releasingStepOutputs(
        () => {
          const s = T.add(a, b);
          block = raw(s).slice();
          return keptOnHost(T.reshape(s, [1, N]));
        },
        { poison: true },
      ),
    );
    expect(live()).toBe(before);
    expect(kept.shape).toEqual([1, N]);
    expect(isResidentOutput(raw(kept))).toBe(false);
    expectSameBits(raw(kept), block!, 'kept');
    expect(keptOnHost(a)).toBe(a); // host memory already
  });

  it('keptOnHost: a disposed copy’s array is the next copy’s of its length; one still held is not', () => {
    const step = (x: T.Tensor, y: T.Tensor) =>
      T.noGrad(() => releasingStepOutputs(() => keptOnHost(T.reshape(T.add(x, y), [1, N]))));
    const [a, b, c] = [rand(), rand(), rand()];
    const first = step(a, b);
    const firstArray = raw(first);
    const view = T.reshape(first, [N]); // a view shares the storage: disposing one of the two frees nothing
    first.dispose();
    const held = step(a, c);
    expect(raw(held)).not.toBe(firstArray);
    view.dispose(); // the last tensor on it: the array is spare now
    const reused = step(b, c);
    expect(raw(reused)).toBe(firstArray);
    const [ad, bd, cd] = [raw(a), raw(b), raw(c)];
    for (let i = 0; i < N; i++) expect(raw(reused)[i]).toBe(Math.fround(bd[i]! + cd[i]!)); // this step's values
    expect(raw(held)[0]).toBe(Math.fround(ad[0]! + cd[0]!)); // the held copy untouched
    expect(step(a, b)).not.toBe(reused); // each spare is handed out once
    expect(raw(step(a, b))).not.toBe(firstArray);
  });
});
