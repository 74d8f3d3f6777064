// The MTP loss against explicit per-position float64 loops, masking at sequence ends and padding,
// λ schedules, and gradients of every MTP parameter against finite differences.
import { describe, expect, it } from 'vitest';
import { Embedding, Linear, noGrad, Parameter, reshape, tensor, type Tensor } from '@dsv3/core';
import { constantLambda, deepseekV3Lambda, mtpLoss, MultiTokenPredictor, piecewiseLambda } from '../src/index.js';
import { PointwiseBlock, ReferenceBlock } from '../src/testing/index.js';
import { gradcheckParams, rand64, randomize, randTokens } from './helpers.js';

const EPS = 1e-6;

type Vec = Float64Array;
const rms = (x: Vec, w: ArrayLike<number>): Vec => {
  let ss = 0;
  for (const v of x) ss += v * v;
  const r = 1 / Math.sqrt(ss / x.length + EPS);
  return x.map((v, i) => v * r * w[i]!);
};
const matvec = (w: ArrayLike<number>, out: number, x: ArrayLike<number>): Vec => {
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) for (let i = 0; i < x.length; i++) y[o]! += w[o * x.length + i]! * x[i]!;
  return y;
};
const silu = (z: number): number => z / (1 + Math.exp(-z));
const ceOf = (logits: ArrayLike<number>, target: number): number => {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]!);
  let s = 0;
  for (let i = 0; i < logits.length; i++) s += Math.exp(logits[i]! - max);
  return max + Math.log(s) - logits[target]!;
};

function setup(seed: number, opts: { dim?: number; vocab?: number; depth?: number; attention?: boolean } = {}) {
  const dim = opts.dim ?? 4;
  const vocab = opts.vocab ?? 7;
  const embedding = new Embedding(vocab, dim, { dtype: 'f64' });
  const head = new Linear(dim, vocab, { dtype: 'f64' });
  const pred = new MultiTokenPredictor({
    depth: opts.depth ?? 2,
    dim,
    vocabSize: vocab,
    dtype: 'f64',
    seed,
    shared: { embedding, head },
    makeBlock: (d) =>
      opts.attention
        ? new ReferenceBlock({ dim, heads: 2, ffnDim: 6, dtype: 'f64', seed: seed + d })
        : new PointwiseBlock({ dim, ffnDim: 6, dtype: 'f64', seed: seed + d }),
  });
  randomize(pred, seed + 10);
  randomize(embedding, seed + 11);
  randomize(head, seed + 12);
  return { dim, vocab, embedding, head, pred };
}

/** The loss written out position by position for a PointwiseBlock predictor (nothing shared with the implementation but the weights). */
function manualPointwiseLoss(
  env: ReturnType<typeof setup>,
  hMain: Tensor,
  tokens: Tensor,
  lambda: number,
  valid: (b: number, j: number) => boolean,
  labelAt?: (b: number, j: number) => number,
): number {
  const { dim, vocab, pred } = env;
  const sd = Object.fromEntries(Object.entries(pred.stateDict()).map(([k, v]) => [k, v.dataSync()]));
  const E = env.embedding.weight.value.dataSync();
  const H = env.head.weight.value.dataSync();
  const [B, S] = tokens.shape as [number, number];
  const t = tokens.dataSync();
  const h0 = hMain.dataSync();
  const D = pred.depth;
  let total = 0;
  let prev: Vec[][] = Array.from({ length: B }, (_, b) =>
    Array.from({ length: S }, (_, i) => Float64Array.from(h0.subarray((b * S + i) * dim, (b * S + i + 1) * dim))),
  );
  for (let k = 1; k <= D; k++) {
    const p = `layers.${k - 1}.`;
    const w = (n: string): ArrayLike<number> => sd[p + n]!;
    let sum = 0;
    let count = 0;
    const next: Vec[][] = [];
    for (let b = 0; b < B; b++) {
      next.push([]);
      for (let i = 0; i + k < S; i++) {
        const tok = t[b * S + i + k]!;
        const e = rms(Float64Array.from(E.subarray(tok * dim, (tok + 1) * dim)), w('enorm.weight'));
        const hh = rms(prev[b]![i]!, w('hnorm.weight'));
        const cat = new Float64Array(2 * dim);
        cat.set(e, 0); // embedding first
        cat.set(hh, dim);
        const x = matvec(w('eh_proj.weight'), dim, cat);
        const n = rms(x, w('block.post_attention_layernorm.weight'));
        const g = matvec(w('block.mlp.gate_proj.weight'), 6, n);
        const u = matvec(w('block.mlp.up_proj.weight'), 6, n);
        const y = matvec(
          w('block.mlp.down_proj.weight'),
          dim,
          g.map((z, j) => silu(z) * u[j]!),
        ).map((v, j) => v + x[j]!);
        next[b]!.push(y);
        const logits = matvec(H, vocab, rms(y, w('shared_head.norm.weight')));
        // depth k at position i predicts t_{i+k+1}: needs positions i, i+k, i+k+1 real.
        const target = labelAt ? labelAt(b, i + k) : i + k + 1 < S ? t[b * S + i + k + 1]! : -100;
        const ok = valid(b, i) && valid(b, i + k) && (labelAt ? target !== -100 : i + k + 1 < S && valid(b, i + k + 1));
        if (!ok) continue;
        sum += ceOf(logits, target);
        count++;
      }
    }
    total += count ? sum / count : 0;
    prev = next;
  }
  return (lambda / D) * total;
}

describe('mtpLoss', () => {
  it('equals an explicit per-position float64 loop (D = 2, masking at sequence ends and padding)', async () => {
    for (const seed of [1, 2, 3]) {
      const env = setup(seed * 100);
      const [B, S] = [2, 6];
      const tokens = randTokens(B, S, env.vocab, seed);
      const hMain = rand64([B, S, env.dim], seed + 5);
      const fwd = env.pred.forward(hMain, tokens);
      expect(fwd.logits.map((l) => l.shape)).toEqual([
        [B, S - 1, env.vocab],
        [B, S - 2, env.vocab],
      ]);

      const full = mtpLoss(fwd.logits, tokens, { lambda: 0.3 });
      expect(
        Math.abs((await full.loss.item()) - manualPointwiseLoss(env, hMain, tokens, 0.3, () => true)),
      ).toBeLessThan(1e-12);
      // depth k has S - k - 1 targets per sequence
      expect(await Promise.all(full.counts.map((c) => c.item()))).toEqual([B * (S - 2), B * (S - 3)]);

      const lengths = [6, 4];
      const byLen = mtpLoss(fwd.logits, tokens, { lambda: 0.3, lengths });
      const want = manualPointwiseLoss(env, hMain, tokens, 0.3, (b, j) => j < lengths[b]!);
      expect(Math.abs((await byLen.loss.item()) - want)).toBeLessThan(1e-12);
      expect(await Promise.all(byLen.counts.map((c) => c.item()))).toEqual([4 + 2, 3 + 1]);

      // a padding mask (here left padding on row 1) instead of lengths
      const maskArr = [1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1];
      const mask = tensor(Uint8Array.from(maskArr), { shape: [B, S], dtype: 'bool' });
      const byMask = mtpLoss(fwd.logits, tokens, { lambda: 0.3, mask });
      expect(
        Math.abs(
          (await byMask.loss.item()) - manualPointwiseLoss(env, hMain, tokens, 0.3, (b, j) => maskArr[b * S + j] === 1),
        ),
      ).toBeLessThan(1e-12);
    }
  });

  it('takes explicit labels (distillation targets) with ignoreIndex', async () => {
    const env = setup(7);
    const [B, S] = [2, 5];
    const tokens = randTokens(B, S, env.vocab, 8);
    const labelsArr = Int32Array.from(randTokens(B, S, env.vocab, 9).dataSync());
    labelsArr[3] = -100;
    const labels = tensor(labelsArr, { shape: [B, S], dtype: 'i32' });
    const hMain = rand64([B, S, env.dim], 10);
    const fwd = env.pred.forward(hMain, tokens);
    const got = await mtpLoss(fwd.logits, tokens, { lambda: 1, labels }).loss.item();
    expect(
      Math.abs(
        got -
          manualPointwiseLoss(
            env,
            hMain,
            tokens,
            1,
            () => true,
            (b, j) => labelsArr[b * S + j]!,
          ),
      ),
    ).toBeLessThan(1e-12);
  });

  it('matches a per-prefix recomputation with a causal attention block', async () => {
    const env = setup(21, { attention: true });
    const [B, S] = [2, 6];
    const tokens = randTokens(B, S, env.vocab, 22);
    const hMain = rand64([B, S, env.dim], 23);
    const lengths = [6, 5];
    const got = await mtpLoss(env.pred.forward(hMain, tokens).logits, tokens, { lambda: 0.1, lengths }).loss.item();
    const t = tokens.dataSync();
    let total = 0;
    noGrad(() => {
      for (let k = 1; k <= 2; k++) {
        let sum = 0;
        let count = 0;
        for (let b = 0; b < B; b++) {
          for (let i = 0; i + k + 1 < lengths[b]!; i++) {
            // positions 0..i of sequence b only: depth d reads t_{j+d+1} at position j
            let h = reshape(hMain.slice([b, 0], [b + 1, i + 1]), [1, i + 1, env.dim]);
            let logits: Tensor | null = null;
            for (let d = 0; d < k; d++) {
              const ids = tensor(
                Int32Array.from({ length: i + 1 }, (_, j) => t[b * S + j + d + 1]!),
                { shape: [1, i + 1], dtype: 'i32' },
              );
              const out = env.pred.module(d).forward(h, ids);
              h = out.hidden;
              logits = out.logits;
            }
            const row = logits!.dataSync().subarray(i * env.vocab, (i + 1) * env.vocab);
            sum += ceOf(row, t[b * S + i + k + 1]!);
            count++;
          }
        }
        total += sum / count;
      }
    });
    expect(Math.abs(got - (0.1 / 2) * total)).toBeLessThan(1e-12);
  });

  it("normalize: 'tokens' divides each depth's sum by the main model's target count", async () => {
    const env = setup(31);
    const tokens = randTokens(2, 6, env.vocab, 32);
    const fwd = env.pred.forward(rand64([2, 6, env.dim], 33), tokens);
    const a = mtpLoss(fwd.logits, tokens, { lambda: 1 });
    const b = mtpLoss(fwd.logits, tokens, { lambda: 1, normalize: 'tokens' });
    const ce = await Promise.all(a.perDepth.map((x) => x.item()));
    const counts = await Promise.all(a.counts.map((x) => x.item()));
    const want = (ce[0]! * counts[0]! + ce[1]! * counts[1]!) / 10 / 2; // 2 sequences × 5 next-token targets
    expect(Math.abs((await b.loss.item()) - want)).toBeLessThan(1e-12);
  });

  it('MultiTokenPredictor.loss = forward + mtpLoss with D = its depth, and maxDepth runs fewer modules', async () => {
    const env = setup(61);
    const tokens = randTokens(2, 6, env.vocab, 62);
    const h = rand64([2, 6, env.dim], 63);
    const opts = { lambda: deepseekV3Lambda(1e9), step: 20000, lengths: [6, 5] };
    const direct = await mtpLoss(env.pred.forward(h, tokens).logits, tokens, opts).loss.item();
    const viaLoss = env.pred.loss(h, tokens, opts);
    expect(viaLoss.lambda).toBe(0.1);
    expect(await viaLoss.loss.item()).toBe(direct);
    const one = env.pred.loss(h, tokens, { ...opts, maxDepth: 1 });
    expect(one.forward.logits.length).toBe(1);
    expect(await one.loss.item()).toBeCloseTo(0.1 * (await one.perDepth[0]!.item()), 14);
  });

  it('handles sequences too short for some depths, and all-masked depths give 0', async () => {
    const env = setup(41);
    const tokens = randTokens(1, 2, env.vocab, 42);
    const fwd = env.pred.forward(rand64([1, 2, env.dim], 43), tokens);
    expect(fwd.logits.length).toBe(1); // depth 2 has no position (needs t_{i+2})
    const r = mtpLoss(fwd.logits, tokens, { lambda: 0.3, depth: 2 });
    expect(await r.loss.item()).toBe(0); // depth 1's only position has no target
    expect(await r.counts[0]!.item()).toBe(0);
  });

  it('λ schedules', () => {
    expect(constantLambda(0.3)(1e9)).toBe(0.3);
    const pw = piecewiseLambda([100, 200], [0.3, 0.2, 0.1]);
    expect([0, 99, 100, 199, 200, 1e6].map(pw)).toEqual([0.3, 0.3, 0.2, 0.2, 0.1, 0.1]);
    // V3: 0.3 for the first 10T tokens, then 0.1
    const v3 = deepseekV3Lambda(4096 * 15360);
    const switchStep = Math.ceil(10e12 / (4096 * 15360));
    expect(v3(0)).toBe(0.3);
    expect(v3(switchStep - 1)).toBe(0.3);
    expect(v3(switchStep)).toBe(0.1);
    const ramp = deepseekV3Lambda((s) => s * 1e9);
    expect(ramp(9999)).toBe(0.3);
    expect(ramp(10000)).toBe(0.1);
    expect(() => constantLambda(-1)).toThrow(/λ/);
  });
});

describe('MTP gradients (float64 finite differences)', () => {
  it('eh_proj, enorm, hnorm, the block, shared_head.norm, the shared weights and the trunk hidden state', () => {
    const env = setup(51, { attention: true, vocab: 5 });
    const [B, S] = [2, 5];
    const tokens = randTokens(B, S, env.vocab, 52);
    const hMain = new Parameter(rand64([B, S, env.dim], 53));
    const loss = (): Tensor =>
      mtpLoss(env.pred.forward(hMain.value, tokens).logits, tokens, { lambda: 0.3, lengths: [5, 4] }).loss;
    const params: [string, Parameter][] = [
      ...env.pred.namedParameters(),
      ['shared embedding', env.embedding.weight],
      ['shared head', env.head.weight],
      ['main hidden', hMain],
    ];
    expect(params.map(([n]) => n)).toEqual(
      expect.arrayContaining([
        'layers.0.eh_proj.weight',
        'layers.1.enorm.weight',
        'layers.1.hnorm.weight',
        'layers.0.block.self_attn.q_proj.weight',
        'layers.1.block.mlp.down_proj.weight',
        'layers.1.shared_head.norm.weight',
      ]),
    );
    gradcheckParams('mtp', loss, params, { maxElems: 12, tol: 1e-6 });
  });
});
