// The combine weights' backward into the scores (routingWeightsTensor) as one f32 CPU kernel: bitwise
// the composed rule it replaced (the same core ops, in the same order) on ragged shapes, top-k choices
// and repeated experts, with and without normalization; within the f32 roundings of a float64
// reference; f64 scores keep the composed path; an expert index outside the scores is a RangeError.
import { describe, expect, it } from 'vitest';
import { add, div, exec1, full, mul, Rng, scatterAlong, sub, sum, takeAlong, tensor, type Tensor } from '@dsv3/core';
import { routingWeightsTensor } from '../src/gate';
import { ROUTE_WEIGHTS_BACKWARD_OP } from '../src/route-weights-backward';

const rng = new Rng(1111);
const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** gate.ts's composed backward, op for op. */
function composed(g: Tensor, scores: Tensor, indices: Tensor, normTopkProb: boolean, scale: number): Tensor {
  let gs: Tensor;
  if (normTopkProb) {
    const sel = takeAlong(scores, indices, -1);
    const S = add(sum(sel, -1, true), 1e-20);
    gs = mul(sub(g, div(sum(mul(g, sel), -1, true), S)), div(scale, S));
  } else gs = mul(g, scale);
  return scatterAlong(full(scores.shape, 0, { dtype: scores.dtype }), indices, gs, -1);
}

/** The rule in float64 from the same f32 inputs. */
function f64Reference(
  G: Float32Array,
  s: Float32Array,
  idx: Int32Array,
  T: number,
  E: number,
  k: number,
  norm: boolean,
  scale: number,
) {
  const out = new Float64Array(T * E);
  for (let t = 0; t < T; t++) {
    let S = 1e-20;
    let q = 0;
    for (let j = 0; j < k; j++) {
      S += s[t * E + idx[t * k + j]!]!;
      q += G[t * k + j]! * s[t * E + idx[t * k + j]!]!;
    }
    for (let j = 0; j < k; j++)
      out[t * E + idx[t * k + j]!]! += norm ? (scale / S) * (G[t * k + j]! - q / S) : scale * G[t * k + j]!;
  }
  return out;
}

function inputs(T: number, E: number, k: number, repeats: boolean) {
  const s = Float32Array.from({ length: T * E }, () => 1 / (1 + Math.exp(-4 * (rng.uniform() - 0.5))));
  const G = Float32Array.from({ length: T * k }, () => 2 * rng.uniform() - 1);
  const idx = new Int32Array(T * k);
  for (let t = 0; t < T; t++) {
    const order = Array.from({ length: E }, (_, e) => e).sort(() => rng.uniform() - 0.5);
    for (let j = 0; j < k; j++) idx[t * k + j] = repeats && j > 0 && t % 3 === 0 ? idx[t * k]! : order[j]!;
  }
  return { s, G, idx };
}

describe('the combine weights backward (moe.routeWeightsBackward)', () => {
  for (const [T, E, k] of [
    [1, 4, 1],
    [7, 16, 4],
    [33, 64, 6],
    [5, 8, 8], // every expert chosen
    [1024, 16, 4], // the tiny preset's layer
  ] as const)
    for (const norm of [true, false])
      for (const repeats of [false, true])
        it(`T ${T}, E ${E}, k ${k}, ${norm ? 'normalized' : 'scaled'}${repeats ? ', experts repeated' : ''}: the composed rule's bits, near float64`, () => {
          const { s, G, idx } = inputs(T, E, k, repeats);
          const scale = norm ? 2.5 : 1.7;
          const g = tensor(G, { shape: [T, k], dtype: 'f32' });
          const scores = tensor(s, { shape: [T, E], dtype: 'f32' });
          const indices = tensor(idx, { shape: [T, k], dtype: 'i32' });
          const got = exec1(ROUTE_WEIGHTS_BACKWARD_OP, [g, scores, indices], { normTopkProb: norm, scale });
          expect(got.shape).toEqual([T, E]);
          const want = composed(g, scores, indices, norm, scale).dataSync() as Float32Array;
          const d = got.dataSync() as Float32Array;
          expect(bits(d).equals(bits(want))).toBe(true);
          // f32 roundings (≤ 2^-24 relative each) of the products, sums and quotients: for a chosen
          // expert, ≤ 16·2^-24·(scale/S)·Σ over its slots of (|g_j| + Σ_l |g_l|·s_l/S) normalized,
          // 2·2^-24·scale·Σ |g_j| scaled; the experts not chosen are exactly 0
          const ref = f64Reference(G, s, idx, T, E, k, norm, scale);
          const bound = new Float64Array(T * E);
          for (let t = 0; t < T; t++) {
            let S = 0;
            let A = 0;
            for (let j = 0; j < k; j++) S += s[t * E + idx[t * k + j]!]!;
            for (let j = 0; j < k; j++) A += (Math.abs(G[t * k + j]!) * s[t * E + idx[t * k + j]!]!) / S;
            for (let j = 0; j < k; j++)
              bound[t * E + idx[t * k + j]!]! += norm
                ? 16 * 2 ** -24 * (scale / S) * (Math.abs(G[t * k + j]!) + A)
                : 2 * 2 ** -24 * scale * Math.abs(G[t * k + j]!);
          }
          for (let i = 0; i < ref.length; i++) expect(Math.abs(d[i]! - ref[i]!)).toBeLessThanOrEqual(bound[i]!);
        });

  it('through routingWeightsTensor: the kernel for f32 scores, the composed rule for f64 (same math)', () => {
    const { s, G, idx } = inputs(9, 16, 4, false);
    for (const dtype of ['f32', 'f64'] as const) {
      const scores = tensor(s, { shape: [9, 16], dtype }).requireGrad();
      const indices = tensor(idx, { shape: [9, 4], dtype: 'i32' });
      const values = takeAlong(scores.detach(), indices, -1);
      const w = routingWeightsTensor(scores, indices, values, true, 2.5);
      sum(mul(w, tensor(G, { shape: [9, 4], dtype }))).backward();
      const want = composed(tensor(G, { shape: [9, 4], dtype }), scores.detach(), indices, true, 2.5);
      expect(Array.from(scores.grad!.dataSync())).toEqual(Array.from(want.dataSync()));
    }
  });

  it('an expert index outside the scores: RangeError', () => {
    const g = tensor(new Float32Array(4), { shape: [2, 2], dtype: 'f32' });
    const scores = tensor(new Float32Array(8).fill(0.5), { shape: [2, 4], dtype: 'f32' });
    for (const bad of [4, -1]) {
      const indices = tensor(Int32Array.of(0, 1, 2, bad), { shape: [2, 2], dtype: 'i32' });
      expect(() => exec1(ROUTE_WEIGHTS_BACKWARD_OP, [g, scores, indices], { normTopkProb: true, scale: 1 })).toThrow(
        new RangeError(`${ROUTE_WEIGHTS_BACKWARD_OP}: expert index ${bad} is out of range [0, 4)`),
      );
    }
  });
});
