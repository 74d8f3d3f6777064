// The MoE layer's training forward posts its shared expert's gate and up products to the GEMM's worker
// in the background while it routes (core's inBackground): the layer's output, its routing and every
// gradient (input, gate, routed and shared experts) bitwise the forward with those products run at once,
// on 2 threads with recycled arrays poisoned, at the tiny preset's shape and a ragged one (weights and
// input in the engine's memory, where the products read them in place).
import { afterEach, describe, expect, it } from 'vitest';
import { exec, Rng, setGemmThreads, setPoisonRecycled, tensor, type Tensor } from '@dsv3/core';
import { gemmConfig } from '../../core/src/cpu/gemm/config';
import { DeferredProducts } from '../../core/src/cpu/gemm/deferred-products';
import { MoE } from '../src/index';
import { moeConfig } from './layer-helpers';

afterEach(() => {
  gemmConfig.deferForward = true;
  setPoisonRecycled(false);
  setGemmThreads(2);
});
const bits = (a: Float32Array) => Array.from(new Uint32Array(a.slice().buffer));

function step(background: boolean, H: number, I: number, T: number) {
  gemmConfig.deferForward = background;
  const moe = new MoE(moeConfig({ hiddenSize: H, moeIntermediateSize: I, nRoutedExperts: 16, numExpertsPerTok: 4 }), {
    seed: 3,
  });
  // In the engine's memory, as a training step's weights (AdamW's state) and activations lie.
  const resident = (t: Tensor) => exec('toResident', [t], {})[0]!;
  for (const p of moe.parameters()) p.assign(resident(p.value));
  const x = resident(
    tensor(new Rng(8).fillUniform(new Float32Array(T * H), -1, 1) as Float32Array, { shape: [T, H] }),
  ).requireGrad();
  // Counts the shared expert's products that went to the worker.
  let posted = 0;
  const post = DeferredProducts.prototype.deferWeight;
  DeferredProducts.prototype.deferWeight = function (this: DeferredProducts, ...a) {
    const ok = post.apply(this, a);
    if (ok) posted++;
    return ok;
  };
  try {
    const { output, routing } = moe.forwardWithRouting(x);
    output.square().sum().backward();
    const out = [output, routing.weights, x.grad, ...moe.parameters().map((p) => p.grad)];
    expect(out.map((t) => t !== null)).toEqual(out.map(() => true)); // 16 experts over 4 · T slots: every one gets rows
    return { posted, values: out.map((t) => bits(t!.rawSync() as Float32Array)) };
  } finally {
    DeferredProducts.prototype.deferWeight = post;
  }
}

describe('MoE shared expert in the background', () => {
  for (const [H, I, T] of [
    [128, 64, 1024],
    [96, 48, 777],
  ] as const) {
    it(`forward and backward bitwise the products run at once (H ${H}, I ${I}, ${T} tokens, poisoned recycling)`, () => {
      setGemmThreads(2);
      setPoisonRecycled(true);
      const now = step(false, H, I, T);
      const bg = step(true, H, I, T);
      expect(now.posted).toBe(0);
      expect(bg.posted).toBe(2); // the shared expert's gate and up
      expect(bg.values.length).toBe(now.values.length);
      bg.values.forEach((v, i) => expect(v).toEqual(now.values[i]));
    });
  }
});
