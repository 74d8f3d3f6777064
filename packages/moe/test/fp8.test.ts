// FP8 experts (expertLinear: 'fp8', @dsv3/fp8's FP8Linear): the dispatched layer equals a per-token
// loop over the same FP8 experts, stays within the E4M3 quantization error of the f32 layer with the
// same master weights, and trains (gradients reach every expert's master weights and the gate).
import { describe, expect, it } from 'vitest';
import { add, concat, mul, narrow, noGrad, sum, tensor, type Tensor } from '@dsv3/core';
import { MoE } from '../src/index';
import { moeConfig, randValues, relErr } from './layer-helpers';

const cfg = moeConfig({ hiddenSize: 64, moeIntermediateSize: 32, nRoutedExperts: 16, numExpertsPerTok: 4 });

describe('MoE with FP8 experts', () => {
  const T = 37;
  const x = tensor(randValues(T * 64, 3), { shape: [T, 64], dtype: 'f32' });

  it('the dispatched layer equals a per-token loop over the same FP8 experts', () => {
    const moe = new MoE(cfg, { seed: 4, expertLinear: 'fp8' });
    expect(moe.expertLinear).toBe('fp8');
    const { output, routing } = noGrad(() => moe.forwardWithRouting(x));
    const k = 4;
    const rows: Tensor[] = [];
    noGrad(() => {
      for (let t = 0; t < T; t++) {
        const xt = narrow(x, 0, t, 1);
        let acc = moe.sharedExperts!.forward(xt);
        for (let j = 0; j < k; j++) {
          const e = routing.indices.dataSync()[t * k + j]!;
          acc = add(acc, mul(moe.experts.at(e).forward(xt), routing.weights.dataSync()[t * k + j]!));
        }
        rows.push(acc);
      }
    });
    const ref = concat(rows, 0).dataSync();
    expect(relErr(output.dataSync(), ref)).toBeLessThan(1e-6);
  });

  it('is within the E4M3 quantization error of the f32 layer with the same master weights; gradients too', () => {
    const f32 = new MoE(cfg, { seed: 4 });
    const fp8 = new MoE(cfg, { seed: 4, expertLinear: 'fp8' });
    fp8.loadStateDict(f32.stateDict());
    const R = tensor(randValues(T * 64, 9), { shape: [T, 64], dtype: 'f32' });
    const run = (m: MoE) => {
      const xl = x.detach().requireGrad();
      const out = m.forward(xl);
      sum(mul(out, R)).backward();
      return { out: out.dataSync(), dx: xl.grad!.dataSync() };
    };
    const a = run(f32);
    const b = run(fp8);
    expect(Array.from(fp8.lastRouting!.indices.dataSync())).toEqual(Array.from(f32.lastRouting!.indices.dataSync()));
    const errOut = relErr(b.out, a.out);
    const errDx = relErr(b.dx, a.dx);
    console.log(
      `[MoE fp8 experts] relative L2 error vs f32 experts: out ${(errOut * 100).toFixed(2)}%, dx ${(errDx * 100).toFixed(2)}%`,
    );
    expect(errOut).toBeGreaterThan(1e-3); // it really runs in FP8
    expect(errOut).toBeLessThan(0.1);
    expect(errDx).toBeLessThan(0.1);
    const pa = new Map(f32.namedParameters());
    let checked = 0;
    let worst = 0;
    for (const [name, p] of fp8.namedParameters()) {
      const q = pa.get(name)!;
      if (q.grad === null) {
        expect(p.grad, name).toBeNull();
        continue;
      }
      const e = relErr(p.grad!.dataSync(), q.grad.dataSync());
      worst = Math.max(worst, e);
      expect(e, name).toBeLessThan(0.15);
      checked++;
    }
    expect(checked).toBeGreaterThan(20);
    console.log(
      `[MoE fp8 experts] worst parameter-gradient error vs f32: ${(worst * 100).toFixed(2)}% over ${checked} parameters`,
    );
  });

  it('FP8 experts need f32', () => {
    expect(() => new MoE(cfg, { expertLinear: 'fp8', dtype: 'bf16' })).toThrow(
      /dtype bf16 is not supported with expertLinear 'fp8'/,
    );
    expect(() => new MoE(cfg, { expertLinear: 'fp16' as never })).toThrow(/expertLinear must be 'f32' or 'fp8'/);
  });
});
