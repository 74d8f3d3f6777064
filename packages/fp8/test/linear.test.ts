// FP8Linear on the CPU: gradients against core's f32 Linear (error bounded by E4M3 quantization),
// the exact quantization recipe of each GEMM, W8A8 checkpoints, and an end-to-end regression.
import { relativeError } from '@dsv3/core/testing';
import { describe, expect, it } from 'vitest';
import {
  AdamW,
  Linear,
  Module,
  fromRaw,
  mean,
  mul,
  noGrad,
  randn,
  silu,
  square,
  sub,
  sum,
  type Tensor,
} from '@dsv3/core';
import {
  FP8Linear,
  dequantizeActivation,
  dequantizeWeight,
  fp8GemmBlockScaled,
  quantizeActivation,
  quantizeActivationColumnwise,
  quantizeActivationTransposed,
  quantizeWeight,
  transpose2d,
} from '../src/index';
import { mismatches } from './goldens';

const floats = (t: Tensor): Float32Array => t.rawSync() as Float32Array;

/** Runs y = layer(x), loss = sum(y * g) backward; returns y, dX and the parameter gradients. */
function grads(
  layer: { forward(x: Tensor): Tensor; weight: { grad: Tensor | null } | null; bias: { grad: Tensor | null } | null },
  x: Tensor,
  g: Tensor,
) {
  const xl = x.detach().requireGrad();
  const y = layer.forward(xl);
  sum(mul(y, g)).backward();
  return {
    y: floats(y.detach()),
    dx: floats(xl.grad!),
    dw: layer.weight?.grad ? floats(layer.weight.grad) : null,
    db: layer.bias?.grad ? floats(layer.bias.grad) : null,
  };
}

describe('FP8Linear vs core Linear (f32): gradients within the quantization error', () => {
  // M = 3 * 50 = 150 tokens (a ragged last 128-block for Wgrad), in 256, out 384
  const [B, T, IN, OUT] = [3, 50, 256, 384];
  const x = randn([B, T, IN], { seed: 1 });
  const g = randn([B, T, OUT], { seed: 2 });

  for (const saveInput of ['fp8', 'f32'] as const) {
    it(`saveInput '${saveInput}': relative L2 error of y, dX, dW`, () => {
      const ref = new Linear(IN, OUT, { seed: 7, bias: true });
      const fp8 = new FP8Linear(IN, OUT, { seed: 7, bias: true, saveInput });
      fp8.loadStateDict(ref.stateDict());
      const r = grads(ref, x, g);
      const q = grads(fp8, x, g);
      const err = { y: relativeError(q.y, r.y), dx: relativeError(q.dx, r.dx), dw: relativeError(q.dw!, r.dw!) };
      console.log(
        `[FP8Linear saveInput=${saveInput}] relative L2 error vs f32 Linear: y ${(err.y * 100).toFixed(2)}%, dX ${(err.dx * 100).toFixed(2)}%, dW ${(err.dw * 100).toFixed(2)}%`,
      );
      // Bound (see README): one E4M3 rounding per operand element, relative RMS ~2.6% each, two
      // operands per GEMM → ~3.7%; Wgrad from the cached FP8 X rounds X twice (1x128, then 128x1) → ~4.5%.
      expect(err.y).toBeGreaterThan(0.01);
      expect(err.y).toBeLessThan(0.05);
      expect(err.dx).toBeLessThan(0.05);
      expect(err.dw).toBeLessThan(saveInput === 'fp8' ? 0.06 : 0.05);
      // the bias gradient does not go through FP8
      expect(mismatches(q.db!, r.db!)).toEqual([]);
    });
  }

  it('each GEMM uses the documented quantization (bit-exact against the typed-array recipe)', () => {
    const layer = new FP8Linear(IN, OUT, { seed: 9, exactGemm: true });
    const q = grads(layer, x, g);
    const M = B * T;
    const X = floats(x);
    const G = floats(g);
    const W = floats(layer.weight!.value);
    const opts = { block: 128 };
    // Fprop: X 1x128, W 128x128
    const xq = quantizeActivation(X, [M, IN]);
    const wq = quantizeWeight(W, [OUT, IN]);
    expect(mismatches(q.y, fp8GemmBlockScaled(xq.q, xq.scales, wq.q, wq.scales, M, OUT, IN, opts))).toEqual([]);
    // Dgrad: dY 1x128 along OUT, W^T = transposed 128x128 blocks
    const gq = quantizeActivation(G, [M, OUT]);
    const wtq = transpose2d(wq.q, OUT, IN);
    const wts = transpose2d(wq.scales, Math.ceil(OUT / 128), Math.ceil(IN / 128));
    expect(mismatches(q.dx, fp8GemmBlockScaled(gq.q, gq.scales, wtq, wts, M, IN, OUT, opts))).toEqual([]);
    // ... and the transposed blocks are exactly what quantizing W^T gives
    const direct = quantizeWeight(transpose2d(W, OUT, IN), [IN, OUT]);
    expect(mismatches(direct.q, wtq)).toEqual([]);
    expect(mismatches(direct.scales, wts)).toEqual([]);
    // Wgrad: dY^T and X^T in 128x1 tiles along tokens, X re-quantized from its cached 1x128 FP8 copy
    const gT = quantizeActivationTransposed(G, [M, OUT]);
    const xT = quantizeActivationTransposed(dequantizeActivation(xq.q, xq.scales, [M, IN]), [M, IN]);
    expect(
      mismatches(q.dw!, fp8GemmBlockScaled(gT.q, gT.scales, xT.q, xT.scales, OUT, IN, M, { bScaleLayout: 'row' })),
    ).toEqual([]);
    // (128x1 tiles: one scale per channel and 128 tokens)
    expect(quantizeActivationColumnwise(G, [M, OUT]).scaleShape).toEqual([2, OUT]);
  });

  it('the fast CPU GEMM path gives the same gradients to ~1e-6', () => {
    const a = new FP8Linear(IN, OUT, { seed: 4, exactGemm: true });
    const b = new FP8Linear(IN, OUT, { seed: 4 });
    const ra = grads(a, x, g);
    const rb = grads(b, x, g);
    expect(relativeError(rb.y, ra.y)).toBeLessThan(1e-6);
    expect(relativeError(rb.dx, ra.dx)).toBeLessThan(1e-6);
    expect(relativeError(rb.dw!, ra.dw!)).toBeLessThan(1e-6);
  });

  it('re-quantizes the weight after each optimizer step (cache keyed on the weight tensor)', () => {
    const layer = new FP8Linear(128, 128, { seed: 1 });
    const q0 = layer.quantizedWeight();
    expect(layer.quantizedWeight()).toBe(q0);
    const loss = sum(square(layer.forward(randn([4, 128], { seed: 2 }))));
    loss.backward();
    new AdamW(layer.parameters(), { lr: 1e-2 }).stepUpdate();
    const q1 = layer.quantizedWeight();
    expect(q1).not.toBe(q0);
    expect(mismatches(floats(q1.scales), floats(q0.scales)).length).toBeGreaterThan(0);
  });

  it('rejects inputs whose last dimension is not inFeatures', () => {
    const layer = new FP8Linear(128, 64);
    expect(() => layer.forward(randn([4, 100], { seed: 1 }))).toThrow(
      /input \[4, 100\] does not end in inFeatures = 128/,
    );
    expect(() => new FP8Linear(0, 4)).toThrow(/inFeatures must be a positive integer/);
  });
});

describe('FP8Linear.fromCheckpoint (W8A8 inference)', () => {
  const [IN, OUT] = [384, 200];
  const trained = new FP8Linear(IN, OUT, { seed: 3 });
  const ck = trained.toCheckpoint();

  it('keeps the FP8 weight under the checkpoint names and reproduces the training layer bit-exactly', () => {
    const inf = FP8Linear.fromCheckpoint(ck.weight, ck.weight_scale_inv);
    expect(inf.mode).toBe('w8a8');
    expect(inf.parameters()).toEqual([]);
    const sd = inf.stateDict();
    expect(Object.keys(sd).sort()).toEqual(['weight', 'weight_scale_inv']);
    expect(sd.weight!.dtype).toBe('fp8-e4m3');
    expect([...sd.weight_scale_inv!.shape]).toEqual([2, 3]);
    const x = randn([5, 7, IN], { seed: 4 });
    const y = inf.forward(x);
    expect([...y.shape]).toEqual([5, 7, OUT]);
    expect(mismatches(floats(y), floats(trained.forward(x)))).toEqual([]);
  });

  it('differs from an f32 Linear on the dequantized weight only by the activation quantization', () => {
    const inf = FP8Linear.fromCheckpoint(ck.weight, ck.weight_scale_inv);
    const ref = new Linear(IN, OUT);
    ref.loadStateDict({
      weight: fromRaw(
        'f32',
        [OUT, IN],
        dequantizeWeight(ck.weight.rawSync() as Uint8Array, floats(ck.weight_scale_inv), [OUT, IN]),
      ),
    });
    const x = randn([64, IN], { seed: 5 });
    const err = relativeError(floats(inf.forward(x)), floats(ref.forward(x)));
    console.log(
      `[W8A8] relative L2 vs f32 Linear on the dequantized weight: ${(err * 100).toFixed(2)}% (activation quantization alone)`,
    );
    expect(err).toBeGreaterThan(0.005);
    expect(err).toBeLessThan(0.04);
  });

  it('back-propagates to the input only (frozen FP8 weight), like the training layer', () => {
    const inf = FP8Linear.fromCheckpoint(ck.weight, ck.weight_scale_inv);
    const x = randn([3, IN], { seed: 6 });
    const g = randn([3, OUT], { seed: 7 });
    const a = grads(inf, x, g);
    const b = grads(trained, x, g);
    expect(mismatches(a.dx, b.dx)).toEqual([]);
    expect(a.dw).toBeNull();
  });

  it('picks up new weights from loadStateDict', () => {
    const inf = FP8Linear.fromCheckpoint(ck.weight, ck.weight_scale_inv);
    const other = new FP8Linear(IN, OUT, { seed: 99 }).toCheckpoint();
    inf.loadStateDict({ weight: other.weight, weight_scale_inv: other.weight_scale_inv });
    const x = randn([2, IN], { seed: 8 });
    expect(
      mismatches(
        floats(inf.forward(x)),
        floats(FP8Linear.fromCheckpoint(other.weight, other.weight_scale_inv).forward(x)),
      ),
    ).toEqual([]);
  });

  it('rejects mismatched scale shapes and non-FP8 weights', () => {
    expect(() => FP8Linear.fromCheckpoint(ck.weight, randn([2, 2], { seed: 1 }))).toThrow(
      /weight_scale_inv has shape \[2, 2\], expected \[2, 3\] for weight \[200, 384\]/,
    );
    expect(() => FP8Linear.fromCheckpoint(randn([200, 384], { seed: 1 }), ck.weight_scale_inv)).toThrow(
      /weight must be fp8-e4m3, got f32/,
    );
  });
});

describe('end-to-end: a small regression trains with FP8Linear to the f32 loss', () => {
  it('held-out MSE within 1% relative of the f32 model after 200 AdamW steps', () => {
    const [D, H, O, BATCH, STEPS] = [128, 256, 64, 128, 200];
    const T1 = randn([H, D], { seed: 100, std: 1 / Math.sqrt(D) });
    const T2 = randn([O, H], { seed: 101, std: 1 / Math.sqrt(H) });
    const teacher = (x: Tensor): Tensor => silu(x.matmul(T1, { transB: true })).matmul(T2, { transB: true });
    const batch = (s: number): { x: Tensor; y: Tensor } => {
      const x = randn([BATCH, D], { seed: 1000 + s });
      return { x, y: noGrad(() => teacher(x).add(randn([BATCH, O], { seed: 5000 + s, std: 0.1 }))) };
    };
    class Net extends Module {
      readonly l1: Linear | FP8Linear;
      readonly l2: Linear | FP8Linear;
      constructor(fp8: boolean) {
        super();
        const mk = (i: number, o: number, seed: number): Linear | FP8Linear =>
          fp8 ? new FP8Linear(i, o, { seed }) : new Linear(i, o, { seed });
        this.l1 = this.child('l1', mk(D, H, 1));
        this.l2 = this.child('l2', mk(H, O, 2));
      }
      forward(x: Tensor): Tensor {
        return this.l2.forward(silu(this.l1.forward(x)));
      }
    }
    const result: Record<string, { first: number; last: number; heldOut: number }> = {};
    for (const kind of ['f32', 'fp8'] as const) {
      const net = new Net(kind === 'fp8');
      const opt = new AdamW(net.parameters(), { lr: 3e-3 });
      const losses: number[] = [];
      for (let s = 0; s < STEPS; s++) {
        const { x, y } = batch(s);
        const loss = mean(square(sub(net.forward(x), y)));
        opt.zeroGrad();
        loss.backward();
        opt.stepUpdate();
        losses.push(loss.dataSync()[0]!);
      }
      let heldOut = 0;
      for (let s = 0; s < 8; s++) {
        const { x, y } = batch(100_000 + s);
        heldOut += noGrad(() => mean(square(sub(net.forward(x), y)))).dataSync()[0]! / 8;
      }
      result[kind] = { first: losses[0]!, last: losses.slice(-20).reduce((p, v) => p + v, 0) / 20, heldOut };
    }
    const rel = result.fp8!.heldOut / result.f32!.heldOut - 1;
    const relLast = result.fp8!.last / result.f32!.last - 1;
    console.log(
      `[training] f32: first ${result.f32!.first.toFixed(4)} last-20 ${result.f32!.last.toFixed(5)} held-out ${result.f32!.heldOut.toFixed(5)}; ` +
        `fp8: first ${result.fp8!.first.toFixed(4)} last-20 ${result.fp8!.last.toFixed(5)} held-out ${result.fp8!.heldOut.toFixed(5)}; ` +
        `relative difference held-out ${(rel * 100).toFixed(2)}%, last-20 ${(relLast * 100).toFixed(2)}% (noise floor 0.01)`,
    );
    expect(result.f32!.heldOut).toBeLessThan(result.f32!.first / 5);
    expect(Math.abs(rel)).toBeLessThan(0.01);
    expect(Math.abs(relLast)).toBeLessThan(0.01);
  });
});
