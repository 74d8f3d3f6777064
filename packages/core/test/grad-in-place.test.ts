// Gradients a backward pass made for one tensor alone are changed in place (accumulation, clipping)
// and reused by the next pass after zeroGrad; shared ones never are. Each in-place result is compared
// bit for bit with the same computation into fresh tensors.
import { describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { expectSameBits } from '../src/testing.js';
import { recycleStorage, takeF32 } from '../src/cpu/pool.js';
import { rand64 } from './helpers.js';

const bits = (t: T.Tensor): number[] => Array.from(t.rawSync());

/** Two leaves of a small net and a loss whose every gradient is big enough to be tracked (≥ 4096). */
function net(seed: number) {
  const x = T.cast(rand64([64, 96], seed), 'f32');
  const w = new T.Parameter(T.cast(rand64([80, 96], seed + 1), 'f32'));
  const v = new T.Parameter(T.cast(rand64([80, 64], seed + 2), 'f32'));
  const loss = (k: number): T.Tensor => {
    const h = T.silu(T.matmul(x, T.transpose(w.value))); // [64, 80]
    return T.sum(T.mul(T.matmul(h, v.value), k)); // [64, 64] · k
  };
  return { w, v, loss };
}

describe('gradients changed in place', () => {
  it('accumulate over passes into the buffer the first pass made, bitwise as a fresh add', () => {
    const a = net(1);
    const b = net(1);
    a.loss(1).backward();
    expect(T.ownsGrad(a.w.value) && T.ownsGrad(a.v.value)).toBe(true);
    const held = a.w.grad!.storage;
    a.loss(0.5).backward();
    a.loss(-2).backward();
    expect(a.w.grad!.storage).toBe(held);
    // b: its gradients taken and summed into fresh tensors by hand
    const sums = [b.w, b.v].map(() => [] as T.Tensor[]);
    for (const k of [1, 0.5, -2]) {
      b.loss(k).backward();
      [b.w, b.v].forEach((p, i) => {
        sums[i]!.push(p.grad!);
        p.grad = null;
      });
    }
    [a.w, a.v].forEach((p, i) => {
      const [g0, g1, g2] = sums[i]!;
      expectSameBits(bits(p.grad!), bits(T.add(T.add(g0!, g1!), g2!)), 'p.grad');
    });
  });

  it('clip in place bitwise as multiplying into new tensors; a gradient two leaves share is scaled once', async () => {
    const a = net(4);
    const b = net(4);
    a.loss(3).backward();
    b.loss(3).backward();
    // b's gradients handed to no one: make them unowned by giving each a view (a second tensor on its storage)
    const views = [b.w, b.v].map((p) => T.reshape(p.grad!, [-1]));
    expect(T.ownsGrad(b.w.value)).toBe(false);
    const na = await T.clipGradNorm([a.w, a.v], 0.1);
    const nb = await T.clipGradNorm([b.w, b.v], 0.1);
    expect(na).toBe(nb);
    expect(na).toBeGreaterThan(0.1);
    expectSameBits(bits(a.w.grad!), bits(b.w.grad!), 'w.grad');
    expectSameBits(bits(a.v.grad!), bits(b.v.grad!), 'v.grad');
    expect(views.length).toBe(2);

    // y = p + q: both leaves receive the same gradient buffer, so neither owns it
    const p = new T.Parameter(T.cast(rand64([80, 64], 7), 'f32'));
    const q = new T.Parameter(T.cast(rand64([80, 64], 8), 'f32'));
    const c = T.cast(rand64([80, 64], 9), 'f32');
    T.sum(T.mul(T.add(p.value, q.value), c)).backward();
    expect(T.ownsGrad(p.value) || T.ownsGrad(q.value)).toBe(false);
    const before = bits(p.grad!);
    const norm = await T.clipGradNorm([p, q], 1);
    const f = Math.fround(1 / (norm + 1e-6));
    expectSameBits(
      bits(p.grad!),
      before.map((x) => Math.fround(x * f)),
      'p.grad',
    );
    expectSameBits(bits(q.grad!), bits(p.grad!), 'q.grad');
  });

  it('zeroGrad hands an owned gradient to the next pass, which overwrites it with the same values', () => {
    const a = net(11);
    a.loss(1).backward();
    const first = bits(a.w.grad!);
    const array = (a.w.grad!.storage as T.CpuStorage).data;
    a.w.value.zeroGrad();
    expect(a.w.grad).toBeNull();
    // the dropped array is in the free list: the next array of its size is it
    const taken = takeF32(80 * 96);
    expect(taken).toBe(array);
    recycleStorage(new T.CpuStorage(taken), 0);
    a.v.value.zeroGrad();
    a.loss(1).backward(); // whoever takes the stale buffer writes all of it
    expectSameBits(bits(a.w.grad!), first, 'w.grad');
  });

  it('a gradient buffer also handed back by a recomputation (backwardContributions) is not owned', () => {
    const x = T.cast(rand64([80, 64], 12), 'f32')
      .detach()
      .requireGrad();
    const w = new T.Parameter(T.cast(rand64([80, 64], 13), 'f32'));
    const c = T.cast(rand64([80, 64], 15), 'f32');
    // the gradient below mul is born in the pass; add's backward hands that same buffer to both inputs
    const y = T.mul(T.add(x, w.value), c);
    const seed = T.cast(rand64([80, 64], 14), 'f32');
    const parts = T.backwardContributions(y, seed, x);
    expect(parts.length).toBe(1);
    expect(T.ownsGrad(w.value)).toBe(false);
  });

  it('a parameter taking a new tensor keeps its gradient and its ownership', () => {
    const a = net(21);
    a.loss(1).backward();
    const g = a.w.grad!;
    const old = a.w.value;
    a.w.assign(T.cast(rand64([80, 96], 30), 'f32'));
    expect(a.w.grad).toBe(g);
    expect(old.grad).toBeNull();
    expect(T.ownsGrad(a.w.value)).toBe(true);
  });

  it('a pending gradient this pass alone holds takes further contributions in place, bitwise as fresh adds', () => {
    // h feeds four consumers; its contributions (from mul's backward, born in the pass) are summed in
    // place. w's pending gradient is the same buffer as one of h's contributions (add's backward hands
    // g to both inputs): that sum must not be written in place, or w0's gradient would change with h's.
    const h = T.cast(rand64([64, 96], 40), 'f32')
      .detach()
      .requireGrad();
    const w0 = T.cast(rand64([64, 96], 41), 'f32')
      .detach()
      .requireGrad();
    const c = [42, 43, 44, 45, 46, 47].map((s) => T.cast(rand64([64, 96], s), 'f32'));
    // (h + w)·c0 the first term: the backward reaches it first, so h's first pending gradient is w's too
    const loss = () => {
      // not a leaf, and used last too: its pending gradient waits for its node, after h's sums
      const w = T.mul(w0, c[4]!);
      return T.add(
        T.add(T.sum(T.mul(T.add(h, w), c[0]!)), T.sum(T.mul(h, c[1]!))),
        T.add(T.add(T.sum(T.mul(T.exp(h), c[2]!)), T.sum(T.mul(h, c[3]!))), T.sum(T.mul(w, c[5]!))),
      );
    };
    const one = T.full([], 1, { dtype: 'f32' });
    // the reference: h's contributions, in the order backward() adds them, summed into fresh tensors
    const parts = T.backwardContributions(loss(), one, h);
    expect(parts.length).toBe(4);
    const want = parts.slice(1).reduce((s, p) => T.add(s, p), parts[0]!);
    const wantW = T.mul(T.add(c[0]!, c[5]!), c[4]!);
    w0.grad = null;
    T.startOpProfile();
    loss().backward();
    const ops = new Map(T.stopOpProfile());
    expect(ops.get('addInPlace')?.calls).toBeGreaterThanOrEqual(2); // the sums did run in place
    expectSameBits(bits(h.grad!), bits(want), 'h.grad');
    expectSameBits(bits(w0.grad!), bits(wantW), 'w0.grad'); // (c0 + c5)·c4, untouched by h's sums
  });
});
