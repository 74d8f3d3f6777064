// The backward pass hands gradient buffers it has finished with back to the kernels' free list:
// only buffers born in the pass, whole, and referenced by nothing the pass keeps.
import { describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { recycleStorage, startRecyclingEpoch, takeF32 } from '../src/cpu/pool.js';
import { rand64, relErr } from './helpers.js';

describe('gradient buffer recycling', () => {
  it('reuses a dead buffer born in the epoch; refuses older buffers and partial views', () => {
    const older = new T.CpuStorage(takeF32(8192));
    const epoch = startRecyclingEpoch();
    const young = takeF32(8192);
    expect(recycleStorage(older, epoch)).toBe(false);
    expect(recycleStorage(new T.CpuStorage(young.subarray(0, 4096)), epoch)).toBe(false);
    expect(recycleStorage(new T.CpuStorage(young), epoch)).toBe(true);
    expect(recycleStorage(new T.CpuStorage(young), epoch)).toBe(false); // never twice
    expect(takeF32(8192)).toBe(young);
  });

  it('gradients through fan-out, pass-through and reshapes equal float64 with recycling on (two accumulating passes)', () => {
    const run = (dtype: 'f32' | 'f64') => {
      const a = T.cast(rand64([64, 96], 1), dtype)
        .detach()
        .requireGrad();
      const w = T.cast(rand64([96, 80], 2), dtype)
        .detach()
        .requireGrad();
      const b = T.cast(rand64([80], 3), dtype)
        .detach()
        .requireGrad();
      for (let pass = 0; pass < 2; pass++) {
        const h = T.add(T.matmul(a, w), b); // [64, 80]
        const s = T.add(h, T.silu(h)); // h fans out: its gradient passes through add twice
        const r = T.reshape(T.mul(s, s), [80, 64]);
        const loss = T.add(T.sum(T.rmsNorm(r, T.ones([64], { dtype }), 1e-6)), T.sum(T.mul(a, a)));
        loss.backward();
      }
      return [a.grad!, w.grad!, b.grad!].map((g) => Array.from(g.dataSync()));
    };
    const r64 = run('f64');
    const r32 = run('f32');
    r64.forEach((g, i) => expect(relErr(r32[i]!, g), `gradient ${i}`).toBeLessThan(1e-5));
  });
});
