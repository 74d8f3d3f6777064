// RoPE / YaRN against the DeepSeek-V3 oracles, and the interleaved pair convention.
import { describe, expect, it } from 'vitest';
import { expectSameBits } from '@dsv3/core/testing';
import { tensor } from '@dsv3/core';
import {
  applyRope,
  applyRopeArray,
  mlaConfigFromHf,
  ropeParams,
  ropeTensors,
  yarnMscale,
  type MLAConfig,
} from '../src/index.js';
import { ropeCosSin, ropeCosSinRows, ropeTensorsFrom } from '../src/rope.js';
import { randArray, relErr } from './helpers.js';

// DeepSeek-V3's attention config (HF config.json fields)
const v3hf = {
  hidden_size: 7168,
  num_attention_heads: 128,
  num_key_value_heads: 128,
  q_lora_rank: 1536,
  kv_lora_rank: 512,
  qk_nope_head_dim: 128,
  qk_rope_head_dim: 64,
  v_head_dim: 128,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  max_position_embeddings: 163840,
  rope_scaling: {
    type: 'yarn',
    factor: 40,
    original_max_position_embeddings: 4096,
    beta_fast: 32,
    beta_slow: 1,
    mscale: 1.0,
    mscale_all_dim: 1.0,
  },
  attention_bias: false,
};

describe('YaRN (DeepSeek precompute_freqs_cis)', () => {
  const cfg = mlaConfigFromHf(v3hf);
  const p = ropeParams(cfg);

  it('V3 correction range: low 10, high 23', () => {
    expect(p.yarn).toBe(true);
    expect(p.low).toBe(10);
    expect(p.high).toBe(23);
  });

  it("V3 frequencies: f'_11 = 0.0390069, f'_23 = 3.3338e-5 (relative 1e-5)", () => {
    expect(Math.abs(p.invFreqExact[11]! / 0.0390069 - 1)).toBeLessThan(1e-5);
    expect(Math.abs(p.invFreqExact[23]! / 3.3338e-5 - 1)).toBeLessThan(1e-5);
    // the fast pairs are untouched, the slow ones interpolated by 1/factor
    for (let i = 0; i < 32; i++) {
      const f = 10000 ** ((-2 * i) / 64);
      if (i <= 10) expect(p.invFreqExact[i]).toBeCloseTo(f, 15);
      if (i >= 23) expect(p.invFreqExact[i]! / (f / 40)).toBeCloseTo(1, 12);
    }
  });

  it('V3 softmax scale 0.1352337789 and unit cos/sin factor', () => {
    expect(Math.abs(p.softmaxScale - 0.1352337789)).toBeLessThan(1e-10);
    expect(p.attentionFactor).toBe(1);
    expect(yarnMscale(40, 1)).toBeCloseTo(0.1 * Math.log(40) + 1, 15);
  });

  it('plain RoPE without scaling, and when max positions do not exceed the original', () => {
    const plain = ropeParams({ ...cfg, ropeScaling: null });
    expect(plain.yarn).toBe(false);
    expect(plain.softmaxScale).toBeCloseTo(1 / Math.sqrt(192), 15);
    const short = ropeParams({ ...cfg, maxPositionEmbeddings: 4096 });
    expect(short.yarn).toBe(false);
    for (let i = 0; i < 32; i++) expect(short.invFreqExact[i]).toBeCloseTo(10000 ** ((-2 * i) / 64), 15);
  });

  it('low == high widens the ramp by 0.001 instead of dividing by zero', () => {
    // L = 4, d = 8: corr(32) < corr(1) = -0.196, so low = max(floor, 0) = 0 = high = ceil(-0.196)
    const c: MLAConfig = {
      ...cfg,
      qkRopeHeadDim: 8,
      maxPositionEmbeddings: 64,
      ropeScaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 4 },
    };
    const q = ropeParams(c);
    expect([q.low, q.high]).toEqual([0, 0]);
    // ramp_i = clamp(i / 0.001, 0, 1): pair 0 keeps f_0, the others are divided by the factor
    expect(q.invFreqExact[0]).toBe(1);
    expect(q.invFreqExact[1]! * 4).toBeCloseTo(10000 ** (-2 / 8), 15);
    expect(Array.from(q.invFreqExact).every(Number.isFinite)).toBe(true);
  });
});

describe('RoPE pair convention', () => {
  const cfg: MLAConfig = {
    hiddenSize: 8,
    numHeads: 1,
    qLoraRank: null,
    kvLoraRank: 4,
    qkNopeHeadDim: 2,
    qkRopeHeadDim: 8,
    vHeadDim: 2,
    rmsNormEps: 1e-6,
    ropeTheta: 10000,
    maxPositionEmbeddings: 64,
  };

  it('rotates adjacent pairs (x0,x1),(x2,x3)… as complex numbers (DeepSeek view_as_complex)', () => {
    const p = ropeParams(cfg);
    const x = randArray(8, 1);
    const pos = 5;
    const y = applyRopeArray(p, x, [pos]);
    for (let i = 0; i < 4; i++) {
      const a = Math.fround(pos * Math.fround(10000 ** (-(2 * i) / 8)));
      // (x0 + i x1) · e^{i a}
      expect(y[2 * i]).toBeCloseTo(x[2 * i]! * Math.cos(a) - x[2 * i + 1]! * Math.sin(a), 12);
      expect(y[2 * i + 1]).toBeCloseTo(x[2 * i + 1]! * Math.cos(a) + x[2 * i]! * Math.sin(a), 12);
    }
  });

  it("dot products equal HF's rope_interleave (even/odd de-interleave, then rotate_half)", () => {
    // HF: q_embed = cat(q_even·cos − q_odd·sin, q_odd·cos + q_even·sin) — a permutation of ours,
    // so every q·k (the only thing attention uses) is identical.
    const p = ropeParams(cfg);
    const q = randArray(8, 2);
    const k = randArray(8, 3);
    const [pq, pk] = [7, 3];
    const ours = (v: Float64Array, pos: number): Float64Array => applyRopeArray(p, v, [pos]);
    const hf = (v: Float64Array, pos: number): Float64Array => {
      const out = new Float64Array(8);
      for (let i = 0; i < 4; i++) {
        const a = Math.fround(pos * p.invFreq[i]!);
        out[i] = v[2 * i]! * Math.cos(a) - v[2 * i + 1]! * Math.sin(a);
        out[i + 4] = v[2 * i + 1]! * Math.cos(a) + v[2 * i]! * Math.sin(a);
      }
      return out;
    };
    const dot = (a: Float64Array, b: Float64Array): number => a.reduce((s, v, i) => s + v * b[i]!, 0);
    expect(dot(ours(q, pq), ours(k, pk))).toBeCloseTo(dot(hf(q, pq), hf(k, pk)), 12);
    // and the score depends only on the relative position
    expect(dot(ours(q, pq + 10), ours(k, pk + 10))).toBeCloseTo(dot(ours(q, pq), ours(k, pk)), 6); // angles are f32, as in torch
  });

  it('applyRope on tensors matches applyRopeArray (both layouts)', () => {
    for (const interleave of [true, false]) {
      const p = ropeParams({ ...cfg, ropeInterleave: interleave });
      const [B, S, H] = [2, 3, 2];
      const x = randArray(B * S * H * 8, 4);
      const pos = [4, 5, 6, 10, 11, 12];
      const { cos, sin } = ropeTensors(p, pos, B, 'f64', tensor(0).backend);
      const y = applyRope(tensor(x, { shape: [B, S, H, 8], dtype: 'f64' }), cos, sin, interleave).dataSync();
      expect(relErr(y, applyRopeArray(p, x, pos))).toBeLessThan(1e-12);
    }
  });
});

describe('RoPE tables shared by the layers (ropeCosSinRows)', () => {
  const cfg = mlaConfigFromHf(v3hf); // YaRN on up to 163840 positions, off at 4096 and below

  it("rows equal ropeCosSin's bit for bit: ragged, repeated, out of order, across the table's growth", () => {
    const p = ropeParams({ ...cfg, maxPositionEmbeddings: 5000 });
    for (const pos of [
      [0, 1, 2],
      [7],
      [3000, 2, 2999, 2, 0],
      Array.from({ length: 513 }, (_, i) => 4999 - i * 3),
      [],
    ]) {
      const want = ropeCosSin(p, pos);
      const got = ropeCosSinRows(p, pos);
      expectSameBits(got.cos, want.cos, 'cos', { nan: 'bits' });
      expectSameBits(got.sin, want.sin, 'sin', { nan: 'bits' });
    }
  });

  it('layers with equal rotary parameters read one table; different ones their own (tensors equal per-layer ones)', () => {
    const pos = Array.from({ length: 40 }, (_, i) => 17 + i);
    const layers = [0, 1, 2].map(() => ropeParams({ ...cfg, maxPositionEmbeddings: 4096 }));
    const other = ropeParams({ ...cfg, ropeTheta: 500, maxPositionEmbeddings: 4096 });
    const backend = tensor(0).backend;
    for (const p of [...layers, other]) {
      const want = ropeCosSin(p, pos);
      const { cos, sin } = ropeTensors(p, pos, 2, 'f32', backend);
      expect(cos.shape).toEqual([2, 20, p.dim / 2]);
      expect(Array.from(cos.dataSync())).toEqual(Array.from(Float32Array.from(want.cos)));
      expect(Array.from(sin.dataSync())).toEqual(Array.from(Float32Array.from(want.sin)));
    }
    expect(ropeCosSinRows(other, [5]).cos).not.toEqual(ropeCosSinRows(layers[0]!, [5]).cos);
  });

  it("ropeTensorsFrom: ropeTensors' values of start..start+S-1; the same pair again while the same run is asked for", () => {
    const layers = [0, 1].map(() => ropeParams({ ...cfg, maxPositionEmbeddings: 4096 }));
    const other = ropeParams({ ...cfg, ropeTheta: 500, maxPositionEmbeddings: 4096 });
    const backend = tensor(0).backend;
    const bits32 = (t: { dataSync(): unknown }) => Array.from(new Uint32Array((t.dataSync() as Float32Array).buffer));
    const run = (start: number, S: number) => Array.from({ length: S }, (_, i) => start + i);
    const first = ropeTensorsFrom(layers[0]!, 0, 512, 'f32', backend);
    const want = ropeTensors(layers[0]!, run(0, 512), 1, 'f32', backend);
    expect(first.cos.shape).toEqual([1, 512, layers[0]!.dim / 2]);
    expect(bits32(first.cos)).toEqual(bits32(want.cos));
    expect(bits32(first.sin)).toEqual(bits32(want.sin));
    // every layer of a forward (equal parameters) gets the first layer's tensors
    expect(ropeTensorsFrom(layers[1]!, 0, 512, 'f32', backend).cos).toBe(first.cos);
    expect(ropeTensorsFrom(layers[0]!, 0, 512, 'f32', backend).sin).toBe(first.sin);
    // another run, dtype or set of parameters: its own values
    for (const [p, start, S, dtype] of [
      [layers[0]!, 1, 512, 'f32'],
      [layers[0]!, 0, 511, 'f32'],
      [layers[0]!, 300, 7, 'f32'],
      [other, 0, 512, 'f32'],
      [layers[0]!, 0, 512, 'f64'],
    ] as const) {
      const got = ropeTensorsFrom(p, start, S, dtype, backend);
      const ref = ropeTensors(p, run(start, S), 1, dtype, backend);
      expect(got.cos).not.toBe(first.cos);
      expect(got.cos.shape).toEqual([1, S, p.dim / 2]);
      expect(Array.from(got.cos.dataSync())).toEqual(Array.from(ref.cos.dataSync()));
      expect(Array.from(got.sin.dataSync())).toEqual(Array.from(ref.sin.dataSync()));
    }
    // a smaller maximum is its own key: a run past it is refused, not served from the larger one's tensors
    const short = ropeParams({ ...cfg, maxPositionEmbeddings: 64 });
    ropeTensorsFrom(layers[0]!, 60, 10, 'f32', backend);
    expect(() => ropeTensorsFrom(short, 60, 10, 'f32', backend)).toThrow(/beyond maxPositionEmbeddings/);
  });

  it('rejects positions that are negative, fractional or past maxPositionEmbeddings', () => {
    const p = ropeParams({ ...cfg, maxPositionEmbeddings: 64 });
    expect(() => ropeCosSinRows(p, [0, -1])).toThrow(/non-negative integer/);
    expect(() => ropeCosSinRows(p, [1.5])).toThrow(/non-negative integer/);
    expect(() => ropeCosSinRows(p, [64])).toThrow(/beyond maxPositionEmbeddings/);
    expect(() => ropeTensors(p, [3, 70], 1, 'f32', tensor(0).backend)).toThrow(/beyond maxPositionEmbeddings/);
  });
});
