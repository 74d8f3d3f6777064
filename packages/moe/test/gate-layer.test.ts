import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { cast, loadSafetensors, matmul, noGrad, sum, tensor, type Tensor } from '@dsv3/core';
import {
  gateRoute,
  maxVio,
  MoE,
  MoEGate,
  moeConfigFromHf,
  sequenceBalanceLoss,
  sequenceBalanceLossT,
  updateBias,
  type MoEGateConfig,
} from '../src/index';
import { randValues, referenceMoE, relErr } from './layer-helpers';

// core's copy of /work/shared/fixtures/tiny-v3 (see packages/core/test/fixtures/README.md for provenance)
const TINY = fileURLToPath(new URL('../../core/test/fixtures/tiny-v3/', import.meta.url));
const hfConfig = JSON.parse(readFileSync(`${TINY}config.json`, 'utf8')) as Record<string, unknown>;

describe('MoEGate on the tiny-v3 checkpoint router (layer 1)', () => {
  const prefix = 'model.layers.1.mlp.';
  const ckpt = loadSafetensors(`${TINY}model.safetensors`, {
    names: [`${prefix}gate.weight`, `${prefix}gate.e_score_correction_bias`],
  });
  const cfg = moeConfigFromHf(hfConfig);

  it('reads the HF config', () => {
    expect(cfg).toEqual({
      hiddenSize: 128,
      nRoutedExperts: 16,
      numExpertsPerTok: 4,
      nGroup: 4,
      topkGroup: 2,
      normTopkProb: true,
      routedScalingFactor: 2.5,
      scoringFunc: 'sigmoid',
      useCorrectionBias: true,
      groupScore: 'top2sum',
      moeIntermediateSize: 128,
      nSharedExperts: 1,
    });
  });

  it('routes random hidden states exactly as gateRoute (indices and weights bit for bit)', () => {
    const gate = new MoEGate(cfg);
    gate.loadStateDict({
      weight: cast(ckpt[`${prefix}gate.weight`]!, 'f32'),
      e_score_correction_bias: cast(ckpt[`${prefix}gate.e_score_correction_bias`]!, 'f32'),
    });
    const bias = Float32Array.from(gate.bias!.dataSync());
    expect(bias.some((b) => b !== 0)).toBe(true);
    // hidden states at the scale of the model's activations; 3 sequences of 50 tokens
    const x = tensor(randValues(150 * 128, 42), { shape: [3, 50, 128], dtype: 'f32' });
    const out = gate.forward(x);
    const logits = matmul(x.reshape([-1, 128]), gate.weight.value, { transB: true }).dataSync() as Float32Array;
    const ref = gateRoute(logits, { ...cfg, bias });
    expect(Array.from(out.indices.dataSync())).toEqual(Array.from(ref.indices));
    expect(Array.from(out.weights.dataSync())).toEqual(Array.from(ref.weights));
    expect(Array.from(out.weights.dataSync())).toEqual(Array.from(ref.weights));
    expect(Array.from(out.scores.dataSync())).toEqual(Array.from(ref.scores));
    // the bias matters on these weights: without it some tokens route elsewhere
    const noBias = gateRoute(logits, { ...cfg, bias: undefined, groupScore: 'top2sum' });
    expect(Array.from(noBias.indices)).not.toEqual(Array.from(ref.indices));
  });

  it('the whole layer-1 MoE loaded from the checkpoint matches the float64 reference', () => {
    const all = loadSafetensors(`${TINY}model.safetensors`);
    const moe = new MoE(hfConfig, { seed: 0 });
    moe.loadCheckpoint(all, prefix);
    expect(moe.gate.bias!.dtype).toBe('f32');
    const x = tensor(randValues(24 * 128, 7), { shape: [24, 128], dtype: 'f32' });
    const ref = referenceMoE(moe, x);
    const out = moe.forward(x);
    expect(relErr(out.dataSync(), ref.out)).toBeLessThanOrEqual(1e-5);
    expect(() => moe.loadCheckpoint(all, 'model.layers.0.mlp.')).toThrow(
      /missing 53 tensor\(s\): model\.layers\.0\.mlp\.gate\.weight/,
    );
  });
});

const small: MoEGateConfig = {
  hiddenSize: 12,
  nRoutedExperts: 16,
  numExpertsPerTok: 4,
  nGroup: 4,
  topkGroup: 2,
  normTopkProb: true,
  routedScalingFactor: 2.5,
  scoringFunc: 'sigmoid',
};

describe('MoEGate: load statistics and the auxiliary-loss-free bias update', () => {
  it('counts loads per batch, MaxVio batch and running, and updates the bias from the recorded loads', () => {
    const gate = new MoEGate(small, { seed: 1 });
    const xs = [0, 1, 2].map((s) => tensor(randValues(64 * 12, 100 + s), { shape: [64, 12] }));
    // the loads stay on the device; the caller reads them to log MaxVio
    const loads = xs.map((x) => Array.from(gate.forward(x).load.dataSync()));
    for (const l of loads) gate.loadTracker.update(l);
    loads.forEach((l) => expect(l.reduce((a, b) => a + b, 0)).toBe(64 * 4));
    expect(gate.maxVioBatch).toBeCloseTo(maxVio(loads[2]!), 12);
    const total = loads.reduce((acc, l) => acc.map((v, i) => v + l[i]!), new Array<number>(16).fill(0));
    expect(gate.maxVioGlobal).toBeCloseTo(maxVio(total), 12);
    expect(Array.from(gate.pendingLoad.dataSync())).toEqual(total);
    const expected = updateBias(new Float32Array(16), total, 0.001);
    const got = gate.updateBias(undefined, 0.001);
    expect(Array.from(got.dataSync())).toEqual(Array.from(expected));
    expect(Array.from(gate.bias!.dataSync())).toEqual(Array.from(expected));
    expect(Array.from(gate.pendingLoad.dataSync())).toEqual(new Array(16).fill(0));
    // explicit loads, and the new bias steers the next routing
    gate.updateBias([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0.5);
    const b = gate.bias!.dataSync();
    expect(b[0]).toBeCloseTo(expected[0]! - 0.5, 6);
    expect(b[1]).toBeCloseTo(expected[1]! + 0.5, 6);
    gate.resetLoadStats();
    expect(gate.loadTracker.numSteps).toBe(0);
  });

  it('aux-loss-free balancing drives MaxVio down on a skewed router', () => {
    const gate = new MoEGate(
      { ...small, hiddenSize: 16, nRoutedExperts: 32, nGroup: 8, topkGroup: 4, numExpertsPerTok: 4 },
      { seed: 3, std: 0.3 },
    );
    // skew: experts 0..3 get a large weight component along a common direction
    const w = Float64Array.from(gate.weight.value.dataSync());
    for (let e = 0; e < 4; e++) for (let h = 0; h < 16; h++) w[e * 16 + h]! += 0.4;
    gate.weight.assign(tensor(w, { shape: [32, 16], dtype: 'f32' }));
    const batch = (s: number): Tensor => tensor(randValues(256 * 16, 1000 + s, 1), { shape: [256, 16] }).add(0.3);
    const route = (s: number) => gate.loadTracker.update(noGrad(() => gate.forward(batch(s))).load.dataSync());
    route(0);
    const first = gate.maxVioBatch;
    for (let step = 1; step < 150; step++) {
      gate.updateBias(undefined, 0.01);
      route(step);
    }
    expect(first).toBeGreaterThan(1.5);
    expect(gate.maxVioBatch).toBeLessThan(first / 3);
  });

  it('gates without noaux_tc have no bias buffer', () => {
    const gate = new MoEGate({ ...small, useCorrectionBias: false });
    expect(gate.bias).toBeNull();
    expect(Object.keys(gate.stateDict())).toEqual(['weight']);
    expect(() => gate.updateBias([1], 0.001)).toThrow(/no e_score_correction_bias/);
  });
});

describe('sequenceBalanceLossT', () => {
  it('value and gradient match the typed-array sequenceBalanceLoss (f64), several sequences', () => {
    const gate = new MoEGate({ ...small, hiddenSize: 8 }, { seed: 2, dtype: 'f64' });
    const x = tensor(randValues(12 * 8, 17), { shape: [12, 8], dtype: 'f64' });
    const out = gate.forward(x);
    const scores = out.scores.detach().requireGrad();
    const L = sequenceBalanceLossT(scores, out.indices.dataSync(), { alpha: 1e-4, seqLen: 4 });
    L.backward();
    const ref = sequenceBalanceLoss(scores.dataSync() as Float64Array, out.indices.dataSync() as Int32Array, {
      numExperts: 16,
      k: 4,
      alpha: 1e-4,
      seqLen: 4,
    });
    expect(L.dataSync()[0]).toBeCloseTo(ref.loss, 15);
    expect(relErr(scores.grad!.dataSync(), ref.grad)).toBeLessThan(1e-12);
    // the i32 Tensor form of the indices gives the same value
    expect(sequenceBalanceLossT(scores, out.indices, { alpha: 1e-4, seqLen: 4 }).dataSync()[0]).toBeCloseTo(
      ref.loss,
      15,
    );
  });

  it('flows into the gate weight through the scores', () => {
    const moe = new MoE({ ...small, moeIntermediateSize: 4, nSharedExperts: 0 }, { seed: 1 });
    const x = tensor(randValues(8 * 12, 3), { shape: [8, 12], dtype: 'f32' });
    const { routing } = moe.forwardWithRouting(x);
    sequenceBalanceLossT(routing.scores, routing.indices.dataSync(), { alpha: 0.1 }).backward();
    const g = moe.gate.weight.grad!.dataSync();
    expect(sum(moe.gate.weight.grad!.abs()).dataSync()[0]).toBeGreaterThan(0);
    expect(g.length).toBe(16 * 12);
  });

  it('rejects bad arguments', () => {
    const s = tensor(randValues(6 * 4, 1), { shape: [6, 4] }).sigmoid();
    expect(() => sequenceBalanceLossT(s, [0, 1, 2, 3, 0, 9], { alpha: 1 })).toThrow(
      /expert index 9 at position 5 is outside \[0, 4\)/,
    );
    expect(() => sequenceBalanceLossT(s, [0, 1, 2, 3, 0, 1], { alpha: 1, seqLen: 4 })).toThrow(
      /seqLen=4 must be a positive integer dividing the number of tokens 6/,
    );
    expect(() => sequenceBalanceLossT(s, [0, 1, 2, 3, 0], { alpha: 1 })).toThrow(/5 indices is not T\*k for T = 6/);
  });
});
