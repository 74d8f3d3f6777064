// Modules, state dicts, AdamW (f32 and bf16 moments), gradient clipping and LR schedules.
import { describe, expect, it } from 'vitest';
import * as T from '../src/index.js';

describe('Module and state dicts', () => {
  it('names parameters like PyTorch and round-trips a state dict', () => {
    const mlp = new T.SwiGLU(4, 6, { seed: 1 });
    expect(mlp.namedParameters().map(([n]) => n)).toEqual(['gate_proj.weight', 'up_proj.weight', 'down_proj.weight']);
    expect(mlp.numParameters()).toBe(3 * 24);
    const other = new T.SwiGLU(4, 6, { seed: 2 });
    other.loadStateDict(mlp.stateDict());
    const x = T.randn([2, 4], { seed: 3 });
    expect(Array.from(other.forward(x).dataSync())).toEqual(Array.from(mlp.forward(x).dataSync()));
  });

  it('lists every mismatch in one error and loads nothing', () => {
    const lin = new T.Linear(3, 2, { bias: true });
    const before = Array.from(lin.weight.value.dataSync());
    expect(() => lin.loadStateDict({ weight: T.zeros([2, 4]), extra: T.zeros([1]) })).toThrow(
      /weight: shape \[2, 4\], expected \[2, 3\][\s\S]*bias: missing[\s\S]*extra: unexpected/,
    );
    expect(Array.from(lin.weight.value.dataSync())).toEqual(before);
  });

  it('Linear, Embedding and RMSNorm forward', async () => {
    const lin = new T.Linear(2, 2, { bias: true });
    lin.loadStateDict({
      weight: T.tensor([
        [1, 2],
        [3, 4],
      ]),
      bias: T.tensor([0.5, -0.5]),
    });
    expect(await lin.forward(T.tensor([[1, 1]])).toArray()).toEqual([[3.5, 6.5]]);
    const emb = new T.Embedding(5, 3, { seed: 4 });
    expect(emb.forward(T.tensor([[1, 4]], { dtype: 'i32' })).shape).toEqual([1, 2, 3]);
    const norm = new T.RMSNorm(2, 0);
    expect(await norm.forward(T.tensor([3, 4])).toArray()).toEqual([3, 4].map((v) => Math.fround(v / Math.sqrt(12.5))));
  });
});

describe('AdamW', () => {
  function reference(
    w0: number[],
    grads: number[][],
    o: { lr: number; b1: number; b2: number; eps: number; wd: number },
  ): number[] {
    const w = [...w0];
    const m = w.map(() => 0);
    const v = w.map(() => 0);
    grads.forEach((g, t) => {
      for (let i = 0; i < w.length; i++) {
        m[i] = o.b1 * m[i]! + (1 - o.b1) * g[i]!;
        v[i] = o.b2 * v[i]! + (1 - o.b2) * g[i]! ** 2;
        const mh = m[i]! / (1 - o.b1 ** (t + 1));
        const vh = v[i]! / (1 - o.b2 ** (t + 1));
        w[i] = w[i]! * (1 - o.lr * o.wd) - (o.lr * mh) / (Math.sqrt(vh) + o.eps);
      }
    });
    return w;
  }

  it('matches the decoupled-weight-decay update in f64', () => {
    const o = { lr: 0.1, b1: 0.9, b2: 0.95, eps: 1e-8, wd: 0.1 };
    const p = new T.Parameter(T.tensor([0.5, -1, 2], { dtype: 'f64' }));
    const opt = new T.AdamW([p], { lr: o.lr, betas: [o.b1, o.b2], eps: o.eps, weightDecay: o.wd });
    const grads = [
      [0.3, -0.2, 1],
      [0.1, 0.4, -0.5],
      [-0.3, 0.3, 0.2],
    ];
    for (const g of grads) {
      p.grad = T.tensor(g, { dtype: 'f64' });
      opt.stepUpdate();
    }
    const want = reference([0.5, -1, 2], grads, o);
    Array.from(p.value.dataSync()).forEach((x, i) => expect(x).toBeCloseTo(want[i]!, 12));
  });

  it('keeps bf16 moments with f32 master weights', () => {
    const p = new T.Parameter(T.tensor([0.5, -1, 2]));
    const opt = new T.AdamW([p], { lr: 0.01, stateDType: 'bf16' });
    p.grad = T.tensor([0.3, -0.2, 1]);
    opt.stepUpdate();
    const st = opt.moments(p)!;
    expect(st.m.dtype).toBe('bf16');
    expect(p.value.dtype).toBe('f32');
    const want = reference([0.5, -1, 2], [[0.3, -0.2, 1]], { lr: 0.01, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0 });
    Array.from(p.value.dataSync()).forEach((x, i) => expect(x).toBeCloseTo(want[i]!, 6));
    expect(() => new T.AdamW([p], { stateDType: 'f16' as 'bf16' })).toThrow(/stateDType/);
  });
});

describe('gradient clipping and schedules', () => {
  it('clips by global norm', async () => {
    const a = new T.Parameter(T.tensor([3, 0]));
    const b = new T.Parameter(T.tensor([0, 4]));
    a.grad = T.tensor([3, 0]);
    b.grad = T.tensor([0, 4]);
    expect(await T.clipGradNorm([a, b], 1)).toBeCloseTo(5, 6);
    expect(Array.from(a.grad.dataSync())[0]).toBeCloseTo(0.6, 5);
    expect(Array.from(b.grad!.dataSync())[1]).toBeCloseTo(0.8, 5);
    b.grad = T.tensor([NaN, 0]);
    await expect(T.clipGradNorm([a, b], 1)).rejects.toThrow(/NaN or Inf/);
  });

  it('produces warmup, constant, cosine and warmup-stable-decay curves', () => {
    const w = T.linearWarmup(1, 4);
    expect([0, 1, 3, 10].map(w)).toEqual([0.25, 0.5, 1, 1]);
    const c = T.cosineLR(1, { warmup: 2, decay: 10, minLR: 0.1 });
    expect(c(2)).toBeCloseTo(1);
    expect(c(7)).toBeCloseTo(0.55);
    expect(c(50)).toBeCloseTo(0.1);
    const wsd = T.warmupStableDecay(2.2e-4, { warmup: 2, stable: 3, decay: 4, minLR: 2.2e-5 });
    expect(wsd(4)).toBe(2.2e-4);
    expect(wsd(9)).toBeCloseTo(2.2e-5);
    expect(T.constantLR(3)(100)).toBe(3);
  });
});

describe('training end to end', () => {
  it('a tiny MLP fits a toy regression with autograd + AdamW', async () => {
    const rng = new T.Rng(5);
    const x = T.randn([64, 4], { rng });
    const y = T.sum(T.mul(x, T.tensor([1, -2, 0.5, 3])), -1, true);
    const l1 = new T.Linear(4, 16, { rng, bias: true });
    const l2 = new T.Linear(16, 1, { rng, bias: true });
    const params = [...l1.parameters(), ...l2.parameters()];
    const opt = new T.AdamW(params, { lr: 0.02 });
    const losses: number[] = [];
    for (let step = 0; step < 150; step++) {
      opt.zeroGrad();
      const pred = l2.forward(T.silu(l1.forward(x)));
      const loss = T.mean(T.square(T.sub(pred, y)));
      loss.backward();
      opt.stepUpdate();
      losses.push(await loss.item());
    }
    expect(losses[149]!).toBeLessThan(losses[0]! * 0.05);
  });
});

describe('parameter init', () => {
  it('an f32 Linear draws exactly the f64 normal stream rounded to f32 (bf16 rounds from f64)', () => {
    const std = 0.02;
    const want = new T.Rng(7).fillNormal(new Float64Array(5 * 3), 0, std);
    const f32 = new T.Linear(3, 5, { seed: 7, std });
    expect(Array.from(f32.weight.value.dataSync())).toEqual(Array.from(Float32Array.from(want)));
    const bf16 = new T.Linear(3, 5, { seed: 7, std, dtype: 'bf16' });
    expect(Array.from(bf16.weight.value.rawSync() as Uint16Array)).toEqual(Array.from(T.encodeBf16(want)));
  });
});
