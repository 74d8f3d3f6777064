// addRmsNorm (a pre-norm block's residual add and the norm after it): without a gradient recorded, the
// CPU's fused kernel (one pass over the rows) gives the bits of add then rmsNorm — host and engine-memory
// operands, 1 and 2 threads, one row to a prefill's [512, 1024]; with a gradient recorded, or f64, it is
// those two ops (the same values and gradients); the module form equals the function.
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { setGemmThreads } from '../src/cpu/gemm/index.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { inOutputBlock } from '../src/cpu/resident-outputs.js';

const savedThreads = gemmConfig.threads ?? 2;
afterAll(() => setGemmThreads(savedThreads));
const bits = (t: T.Tensor) => Array.from(new Uint32Array(Float32Array.from(t.dataSync()).buffer));

describe('addRmsNorm', () => {
  const SHAPES = [
    [1, 1, 1024],
    [2, 3, 33],
    [1, 7, 1],
    [301, 129],
    [1, 512, 1024],
  ];
  it('fused (no gradient): sum and norm equal add then rmsNorm bit for bit, 1 and 2 threads', () => {
    for (const threads of [1, 2]) {
      setGemmThreads(threads);
      let seed = 1;
      for (const shape of SHAPES) {
        const n = shape[shape.length - 1]!;
        const x = T.randn(shape, { seed: seed++, std: 3 });
        const r = T.randn(shape, { seed: seed++, std: 0.5 });
        const w = T.add(T.randn([n], { seed: seed++, std: 0.1 }), 1);
        for (const eps of [1e-6, 1e-2]) {
          const want = T.noGrad(() => {
            const sum = T.add(x, r);
            return { sum, normed: T.rmsNorm(sum, w, eps) };
          });
          const got = T.noGrad(() => T.addRmsNorm(x, r, w, eps));
          expect(got.sum.shape).toEqual(shape);
          expect(got.normed.shape).toEqual(shape);
          expect(bits(got.sum), `sum [${shape}] ${threads} threads`).toEqual(bits(want.sum));
          expect(bits(got.normed), `norm [${shape}] ${threads} threads`).toEqual(bits(want.normed));
          // a prefill's rows: outputs in the engine's memory (the job in place there)
          if (shape[1] === 512)
            expect(inOutputBlock((got.sum.storage as unknown as { data: Float32Array }).data)).toBe(true);
          // again from engine-memory inputs (the previous outputs)
          const again = T.noGrad(() => T.addRmsNorm(got.sum, got.normed, w, eps));
          const wantAgain = T.noGrad(() => {
            const sum = T.add(want.sum, want.normed);
            return { sum, normed: T.rmsNorm(sum, w, eps) };
          });
          expect(bits(again.sum)).toEqual(bits(wantAgain.sum));
          expect(bits(again.normed)).toEqual(bits(wantAgain.normed));
        }
      }
    }
  });

  it('with a gradient recorded: the two ops, the same values and gradients', () => {
    const x = T.randn([3, 4, 16], { seed: 7 }).requireGrad();
    const r = T.randn([3, 4, 16], { seed: 8 }).requireGrad();
    const w = T.add(T.randn([16], { seed: 9, std: 0.1 }), 1).requireGrad();
    const { sum, normed } = T.addRmsNorm(x, r, w);
    T.sum(T.mul(T.add(sum, normed), normed)).backward();
    const grads = [x.grad!, r.grad!, w.grad!].map(bits);
    const [x2, r2, w2] = [x, r, w].map((t) => T.tensor(t.dataSync(), { shape: t.shape }).requireGrad());
    const s2 = T.add(x2!, r2!);
    const n2 = T.rmsNorm(s2, w2!);
    T.sum(T.mul(T.add(s2, n2), n2)).backward();
    expect(bits(sum)).toEqual(bits(s2));
    expect(bits(normed)).toEqual(bits(n2));
    expect(grads).toEqual([x2!.grad!, r2!.grad!, w2!.grad!].map(bits));
  });

  it('f64, and the module form: as add then rmsNorm', () => {
    const x = T.randn([5, 24], { seed: 3, dtype: 'f64' });
    const r = T.randn([5, 24], { seed: 4, dtype: 'f64' });
    const w = T.randn([24], { seed: 5, dtype: 'f64' });
    const got = T.noGrad(() => T.addRmsNorm(x, r, w, 1e-5));
    const sum = T.add(x, r);
    expect(Array.from(got.sum.dataSync())).toEqual(Array.from(sum.dataSync()));
    expect(Array.from(got.normed.dataSync())).toEqual(Array.from(T.rmsNorm(sum, w, 1e-5).dataSync()));
    const norm = new T.RMSNorm(1024, 1e-6);
    const a = T.randn([1, 9, 1024], { seed: 11 });
    const b = T.randn([1, 9, 1024], { seed: 12 });
    const m = T.noGrad(() => norm.addForward(a, b));
    const f = T.noGrad(() => T.addRmsNorm(a, b, norm.weight.value, 1e-6));
    expect(bits(m.sum)).toEqual(bits(f.sum));
    expect(bits(m.normed)).toEqual(bits(f.normed));
  });

  it('mismatched shapes are refused as add and rmsNorm refuse them', () => {
    const x = T.randn([2, 8], { seed: 1 });
    expect(() => T.noGrad(() => T.addRmsNorm(x, T.randn([2, 8], { seed: 2 }), T.ones([7])))).toThrow(/rmsNorm weight/);
    // broadcast residual: the two ops (add broadcasts), not the fused kernel
    const r = T.randn([8], { seed: 3 });
    const got = T.noGrad(() => T.addRmsNorm(x, r, T.ones([8])));
    expect(bits(got.normed)).toEqual(bits(T.noGrad(() => T.rmsNorm(T.add(x, r), T.ones([8])))));
  });
});
