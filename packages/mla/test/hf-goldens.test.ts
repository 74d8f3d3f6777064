// Both forms against Hugging Face's DeepseekV3Attention (transformers 5.18, float32, eager) on tiny
// random configs: YaRN + q LoRA, direct q_proj, mscale != mscale_all_dim, rotate-half layout.
// Fixture and generator: test/fixtures/make_goldens.py → hf-mla-goldens.safetensors.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { noGrad, tensor, type Tensor } from '@dsv3/core';
import { MLA, mlaConfigFromHf, PagedLatentCache } from '../src/index.js';
import { readSt, relErr } from './helpers.js';

const file = fileURLToPath(new URL('./fixtures/hf-mla-goldens.safetensors', import.meta.url));
const { tensors, metadata } = readSt(file);

function load(name: string): { m: MLA; x: Tensor; pos: number[][]; out: Float32Array } {
  const cfg = mlaConfigFromHf(JSON.parse(metadata[`${name}.config`]!) as Record<string, unknown>);
  const m = new MLA(cfg);
  const state: Record<string, Tensor> = {};
  for (const [k, t] of Object.entries(tensors)) {
    if (!k.startsWith(`${name}.`)) continue;
    const n = k.slice(name.length + 1);
    if (n === 'x' || n === 'out' || n === 'position_ids') continue;
    state[n] = tensor(t.data, { shape: t.shape, dtype: 'f32' });
  }
  m.loadStateDict(state);
  const xs = tensors[`${name}.x`]!;
  const ps = tensors[`${name}.position_ids`]!;
  const [B, S] = ps.shape as [number, number];
  const pos = Array.from({ length: B }, (_, b) => Array.from(ps.data.subarray(b * S, (b + 1) * S)));
  return {
    m,
    x: tensor(xs.data, { shape: xs.shape, dtype: 'f32' }),
    pos,
    out: tensors[`${name}.out`]!.data as Float32Array,
  };
}

describe('MLA vs HF DeepseekV3Attention goldens', () => {
  for (const name of ['c1', 'c2', 'c3', 'c4']) {
    it(`${name}: training form, absorbed kernel and absorbed composed ≤ 1e-5`, () => {
      const { m, x, pos, out } = load(name);
      noGrad(() => {
        const errs = {
          train: relErr(m.forward(x, { positions: pos }).dataSync(), out),
          absorbed: relErr(m.forwardAbsorbed(x, { positions: pos }).dataSync(), out),
          composed: relErr(m.forwardAbsorbed(x, { positions: pos, impl: 'composed' }).dataSync(), out),
        };
        for (const [k, e] of Object.entries(errs)) expect(e, `${name} ${k}: ${e}`).toBeLessThan(1e-5);
      });
    });
  }

  it('c2 through a paged cache: prefill 3 tokens, then decode 4 one at a time', () => {
    const { m, x, out } = load('c2');
    const cfg = m.config;
    const cache = new PagedLatentCache({
      numLayers: 1,
      kvLoraRank: cfg.kvLoraRank,
      ropeDim: cfg.qkRopeHeadDim,
      numBlocks: 4,
      blockSize: 2,
    });
    const seq = cache.allocate();
    const S = x.shape[1]!;
    const got = new Float32Array(out.length);
    const H = cfg.hiddenSize;
    noGrad(() => {
      let at = 0;
      for (const n of [3, 1, 1, 1, 1]) {
        const y = m.forwardAbsorbed(x.narrow(1, at, n), { cache, seqIds: [seq] }).dataSync();
        got.set(y, at * H);
        at += n;
      }
      expect(at).toBe(S);
    });
    expect(relErr(got, out)).toBeLessThan(1e-5);
  });

  it('the goldens tell the pair layouts apart (c1 with the rotate-half layout is far off)', () => {
    const { m, x, pos, out } = load('c1');
    const wrong = new MLA({ ...m.config, ropeInterleave: false });
    wrong.loadStateDict(m.stateDict());
    const e = noGrad(() => relErr(wrong.forward(x, { positions: pos }).dataSync(), out));
    expect(e).toBeGreaterThan(1e-2);
  });

  it('mlaConfigFromHf reads the YaRN fields', () => {
    const cfg = mlaConfigFromHf(JSON.parse(metadata['c3.config']!) as Record<string, unknown>);
    expect(cfg.ropeScaling).toMatchObject({
      type: 'yarn',
      factor: 8,
      originalMaxPositionEmbeddings: 16,
      betaFast: 32,
      betaSlow: 1,
      mscale: 0.8,
      mscaleAllDim: 0.6,
    });
    expect(cfg.qLoraRank).toBe(16);
    expect(mlaConfigFromHf(JSON.parse(metadata['c2.config']!) as Record<string, unknown>).qLoraRank).toBeNull();
  });
});
