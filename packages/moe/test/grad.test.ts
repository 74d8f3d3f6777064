import { describe, expect, it } from 'vitest';
import { mul, noGrad, sum, tensor } from '@dsv3/core';
import { groupedLinear, MoE, swiglu, weightedScatterAdd } from '../src/index';
import { gradcheckTargets, moeConfig, randValues, relErr } from './layer-helpers';

const cfg = moeConfig({ hiddenSize: 10, moeIntermediateSize: 6 });

describe('MoE gradients vs central finite differences (float64)', () => {
  for (const impl of ['fused', 'composed'] as const) {
    it(`input, a routed expert, the shared expert and the gate weight (${impl})`, () => {
      const moe = new MoE(cfg, { seed: 21, dtype: 'f64', impl });
      moe.gate.setBias(Float32Array.from(randValues(8, 2, 0.1)));
      const x = tensor(randValues(6 * 10, 5), { shape: [2, 3, 10], dtype: 'f64' });
      const { routing } = moe.forwardWithRouting(x);
      // pick the busiest expert so the check is not vacuous
      const load = Array.from(routing.load.dataSync());
      const busy = load.indexOf(Math.max(...load));
      const ex = moe.experts.at(busy);
      const sh = moe.sharedExperts!;
      const worst = gradcheckTargets(
        `MoE ${impl}`,
        (xx) => moe.forward(xx),
        x,
        [
          [`experts.${busy}.gate_proj.weight`, ex.gateProj.weight!],
          [`experts.${busy}.up_proj.weight`, ex.upProj.weight!],
          [`experts.${busy}.down_proj.weight`, ex.downProj.weight!],
          ['shared_experts.gate_proj.weight', sh.gateProj.weight!],
          ['shared_experts.down_proj.weight', sh.downProj.weight!],
          ['gate.weight', moe.gate.weight],
        ],
        { tol: 1e-6, maxElems: 80 },
      );
      expect(worst).toBeLessThan(1e-6);
    });
  }

  it('softmax gate without normalization (the routing weights are c·s)', () => {
    const moe = new MoE(
      { ...cfg, scoringFunc: 'softmax', normTopkProb: false, routedScalingFactor: 1.5, useCorrectionBias: false },
      { seed: 3, dtype: 'f64' },
    );
    const x = tensor(randValues(5 * 10, 9), { shape: [5, 10], dtype: 'f64' });
    gradcheckTargets('MoE softmax', (xx) => moe.forward(xx), x, [['gate.weight', moe.gate.weight]], { tol: 1e-6 });
  });

  it('the correction bias gets no gradient and only steers the selection', () => {
    const moe = new MoE(cfg, { seed: 5, dtype: 'f64' });
    const x = tensor(randValues(6 * 10, 1), { shape: [6, 10], dtype: 'f64' });
    const bias = moe.gate.bias!;
    expect(moe.parameters().map((p) => p.value)).not.toContain(bias);
    expect(moe.namedBuffers().map(([n]) => n)).toEqual(['gate.e_score_correction_bias']);
    const out = moe.forward(x);
    sum(out).backward();
    expect(moe.gate.bias!.requiresGrad).toBe(false);
    expect(moe.gate.bias!.grad).toBeNull();
    expect(moe.gate.weight.grad).not.toBeNull();
    // a bias shift that keeps the selection leaves the output unchanged (bit for bit)
    const before = noGrad(() => moe.forward(x)).dataSync();
    const idx = Array.from(moe.lastRouting!.indices.dataSync());
    moe.gate.setBias(new Float32Array(8).fill(0.25));
    const after = noGrad(() => moe.forward(x)).dataSync();
    expect(Array.from(moe.lastRouting!.indices.dataSync())).toEqual(idx);
    expect(Array.from(after)).toEqual(Array.from(before));
  });

  it('an expert that receives no token gets no gradient', () => {
    const moe = new MoE({ ...cfg, nRoutedExperts: 16, nGroup: 8, topkGroup: 2 }, { seed: 8, dtype: 'f64' });
    const x = tensor(randValues(2 * 10, 4), { shape: [2, 10], dtype: 'f64' });
    const { output, routing } = moe.forwardWithRouting(x);
    sum(output).backward();
    const idle = Array.from(routing.load.dataSync()).indexOf(0);
    expect(idle).toBeGreaterThanOrEqual(0);
    expect(moe.experts.at(idle).gateProj.weight!.grad).toBeNull();
    const used = routing.indices.dataSync()[0]!;
    expect(moe.experts.at(used).gateProj.weight!.grad).not.toBeNull();
  });
});

describe('groupedLinear', () => {
  const N = 13;
  const K = 7;
  const O = 5;
  const offsets = [0, 4, 4, 11, 13]; // an empty segment included
  const mk = (seed: number, shape: number[]) =>
    tensor(
      randValues(
        shape.reduce((a, b) => a * b, 1),
        seed,
      ),
      { shape, dtype: 'f64' },
    );

  it('fused and composed agree with a per-row loop (f32 and f64)', () => {
    for (const dtype of ['f32', 'f64'] as const) {
      const x = mk(1, [N, K]).cast(dtype);
      const ws = [0, 1, 2, 3].map((e) => mk(10 + e, [O, K]).cast(dtype));
      const xv = x.dataSync();
      const wv = ws.map((w) => w.dataSync());
      const ref = new Float64Array(N * O);
      for (let e = 0; e < 4; e++)
        for (let r = offsets[e]!; r < offsets[e + 1]!; r++)
          for (let o = 0; o < O; o++) {
            let s = 0;
            for (let q = 0; q < K; q++) s += xv[r * K + q]! * wv[e]![o * K + q]!;
            ref[r * O + o] = s;
          }
      for (const impl of ['fused', 'composed'] as const) {
        const y = groupedLinear(x, ws, offsets, { impl });
        expect(y.dtype).toBe(dtype);
        expect(relErr(y.dataSync(), ref)).toBeLessThan(dtype === 'f32' ? 1e-6 : 1e-14);
      }
    }
  });

  it('fused backward = composed backward; empty segment → null gradient', () => {
    const grads = (['fused', 'composed'] as const).map((impl) => {
      const x = mk(1, [N, K]).requireGrad();
      const ws = [0, 1, 2, 3].map((e) => mk(10 + e, [O, K]).requireGrad());
      const y = groupedLinear(x, ws, offsets, { impl });
      sum(mul(y, mk(99, [N, O]))).backward();
      return { x: x.grad!.dataSync(), ws: ws.map((w) => w.grad?.dataSync() ?? null) };
    });
    const [f, c] = grads as [(typeof grads)[0], (typeof grads)[0]];
    expect(relErr(f.x, c.x)).toBeLessThan(1e-14);
    expect(f.ws[1]).toBeNull();
    for (const e of [0, 2, 3]) expect(relErr(f.ws[e]!, c.ws[e]!)).toBeLessThan(1e-14);
  });

  it('rejects bad offsets and mismatched weights', () => {
    const x = mk(1, [N, K]);
    const ws = [0, 1, 2, 3].map((e) => mk(10 + e, [O, K]));
    expect(() => groupedLinear(x, ws, [0, 4, 11, 13])).toThrow(/offsets must have 5 entries/);
    expect(() => groupedLinear(x, ws, [0, 4, 3, 11, 13])).toThrow(/non-decreasing/);
    expect(() => groupedLinear(x, ws, [0, 4, 4, 11, 12])).toThrow(/from 0 to the 13 rows/);
    expect(() => groupedLinear(x, [...ws.slice(0, 3), mk(3, [O, K + 1])], offsets)).toThrow(
      /weight of expert 3 is \[5, 8\], expected \[5, 7\]/,
    );
    expect(() => groupedLinear(x, [...ws.slice(0, 3), ws[3]!.cast('f32')], offsets)).toThrow(
      /x is f64 but the weight of expert 3 is f32/,
    );
  });
});

describe('fused swiglu and weightedScatterAdd (CPU kernels) = the core-op compositions, values and gradients', () => {
  const mk = (seed: number, shape: number[]) =>
    tensor(
      randValues(
        shape.reduce((a, b) => a * b, 1),
        seed,
      ),
      { shape, dtype: 'f64' },
    );
  it('swiglu', () => {
    const res = (['fused', 'composed'] as const).map((impl) => {
      const g = mk(1, [9, 5]).requireGrad();
      const u = mk(2, [9, 5]).requireGrad();
      const h = swiglu(g, u, { impl });
      sum(mul(h, mk(3, [9, 5]))).backward();
      return [h.dataSync(), g.grad!.dataSync(), u.grad!.dataSync()];
    });
    for (let i = 0; i < 3; i++) expect(relErr(res[0]![i]!, res[1]![i]!)).toBeLessThan(1e-14);
    expect(() => swiglu(mk(1, [2, 3]), mk(1, [3, 2]))).toThrow(/same shape and dtype/);
  });
  it('weightedScatterAdd (tokens hit several times, one token never)', () => {
    const rowsV = Int32Array.from([0, 2, 2, 3, 0, 2, 3]);
    const res = (['fused', 'composed'] as const).map((impl) => {
      const y = mk(1, [7, 4]).requireGrad();
      const w = mk(2, [7]).requireGrad();
      const out = weightedScatterAdd(y, w, tensor(rowsV, { dtype: 'i32' }), 5, { impl });
      expect([...out.shape]).toEqual([5, 4]);
      sum(mul(out, mk(3, [5, 4]))).backward();
      return [out.dataSync(), y.grad!.dataSync(), w.grad!.dataSync()];
    });
    for (let i = 0; i < 3; i++) expect(relErr(res[0]![i]!, res[1]![i]!)).toBeLessThan(1e-14);
    expect(Array.from(res[0]![0]!.slice(4, 8))).toEqual([0, 0, 0, 0]);
  });
});
