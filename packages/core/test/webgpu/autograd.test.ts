// Front-end ops and autograd end to end on WebGPU: the same small models run on the CPU and on
// the GPU, and the losses and every gradient agree within 1e-5 (relative L2).
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../../src/index.js';
import { cpu, type Backend, type Tensor } from '../../src/index.js';
import { acquireGpu, relErr, rint, rnd } from './gpu.js';

const gpu = await acquireGpu();
afterAll(() => gpu?.dispose());

const param = (be: Backend, shape: number[], seed: number, scale = 0.5): Tensor =>
  T.tensor(
    rnd(
      shape.reduce((a, b) => a * b, 1),
      seed,
      -scale,
      scale,
    ),
    { shape, dtype: 'f32', backend: be },
  ).requireGrad();
const data = (be: Backend, shape: number[], seed: number, lo = -1, hi = 1): Tensor =>
  T.tensor(
    rnd(
      shape.reduce((a, b) => a * b, 1),
      seed,
      lo,
      hi,
    ),
    { shape, dtype: 'f32', backend: be },
  );

/** Runs `model` on both backends; compares the loss and the gradients of every parameter. */
async function agree(name: string, model: (be: Backend) => { loss: Tensor; params: Tensor[] }): Promise<void> {
  const c = model(cpu);
  const g = model(gpu!);
  c.loss.backward();
  g.loss.backward();
  const lc = c.loss.dataSync();
  const lg = await g.loss.data();
  expect(relErr(lg, lc), `${name}: loss`).toBeLessThanOrEqual(1e-5);
  for (let i = 0; i < c.params.length; i++) {
    const gc = c.params[i]!.grad;
    const gg = g.params[i]!.grad;
    expect(gc, `${name}: cpu gradient ${i}`).toBeTruthy();
    expect(gg, `${name}: gpu gradient ${i}`).toBeTruthy();
    expect(gg!.backend.name).toBe('webgpu');
    const err = relErr(await gg!.data(), gc!.dataSync());
    expect(err, `${name}: gradient of parameter ${i} [${c.params[i]!.shape}]`).toBeLessThanOrEqual(1e-5);
  }
}

describe.skipIf(!gpu)('webgpu autograd end to end', () => {
  it('a tiny MLP with RMSNorm and cross-entropy', async () => {
    await agree('mlp', (be) => {
      const x = data(be, [8, 16], 1);
      const w1 = param(be, [32, 16], 2);
      const b1 = param(be, [32], 3, 0.1);
      const gw = T.tensor(rnd(32, 4, 0.5, 1.5), { dtype: 'f32', backend: be }).requireGrad();
      const w2 = param(be, [5, 32], 5);
      const b2 = param(be, [5], 6, 0.1);
      const targets = T.tensor(Int32Array.from([0, 4, 2, 2, -100, 1, 3, 0]), { backend: be });
      const h = T.rmsNorm(T.silu(T.linear(x, w1, b1)), gw, 1e-6);
      const logits = T.linear(h, w2, b2);
      return { loss: T.crossEntropy(logits, targets), params: [w1, b1, gw, w2, b2] };
    });
  });

  it('embedding + causal attention (gather / scatterAdd, softmax, batched matmul)', async () => {
    await agree('attention', (be) => {
      const ids = T.tensor(rint(2 * 40, 10, 0, 23), { shape: [2, 40], backend: be });
      const emb = param(be, [23, 12], 11);
      const wq = param(be, [12, 12], 12);
      const wk = param(be, [12, 12], 13);
      const wv = param(be, [12, 12], 14);
      const x = T.embedding(ids, emb); // [2, 40, 12]; its backward scatters 80 ids (the sorted path)
      const q = T.linear(x, wq);
      const k = T.linear(x, wk);
      const v = T.linear(x, wv);
      const scores = T.add(
        T.div(T.matmul(q, k, { transB: true }), Math.sqrt(12)),
        T.causalMask(40, 40, { backend: be }),
      );
      const out = T.matmul(T.softmax(scores), v);
      return { loss: T.mean(T.square(out)), params: [emb, wq, wk, wv] };
    });
  });

  it('reductions, indexing and layout ops', async () => {
    await agree('mixed', (be) => {
      const a = param(be, [6, 10], 20, 1);
      const b = param(be, [10], 21, 1);
      const y = T.tanh(T.add(a, b)); // broadcast add
      const mx = T.max(y, 1); // argmax + takeAlong; backward scatterAlong
      const [vals] = T.topk(T.sigmoid(y), 3);
      const cs = T.cumsum(T.transpose(y), 0);
      const parts = T.split(y, [4, 6], 1);
      const joined = T.concat([parts[1]!, T.pad(parts[0]!, [0, 1], [0, 1], 0.5)], 0);
      const p = T.pow(T.add(T.abs(a), 0.5), 1.5);
      const loss = T.add(
        T.add(T.sum(mx), T.mean(vals)),
        T.add(T.mean(T.mul(cs, cs)), T.add(T.sum(T.logSoftmax(joined)), T.mean(T.slice(p, [1, 2], [5, 9])))),
      );
      return { loss, params: [a, b] };
    });
  });

  it('tensors move between backends; front-end ops stay on the gpu', async () => {
    const be = gpu!;
    const x = T.randn([5, 7], { seed: 3 });
    const xg = await T.toBackend(x, be);
    expect(xg.backend).toBe(be);
    const y = T.softmax(T.mul(xg, 2), -1);
    expect(y.backend.name).toBe('webgpu');
    const back = await T.toBackend(y, cpu);
    expect(relErr(back.dataSync(), T.softmax(T.mul(x, 2), -1).dataSync())).toBeLessThanOrEqual(1e-6);
    expect(() => y.dataSync()).toThrow(/await tensor.data/);
    expect(() => T.add(x, xg)).toThrow(/different backends/);
  });
});
