// The router's selection loop as it was before the twenty-first session's rewrite (routing.ts's
// limitedRoute at c8943ff), frozen: the rewrite must return the same experts in the same order and the
// same weight bits on every input (test/routing-frozen.test.ts).
import type { LimitedSpec, RouteResult } from '../src/routing';

const f32 = Math.fround;

function checkScoresAndBias(scores: Float32Array, E: number, bias: Float32Array | undefined): number {
  if (scores.length % E !== 0)
    throw new Error(`scores length ${scores.length} is not a multiple of nRoutedExperts=${E} (expected [T, E])`);
  const T = scores.length / E;
  if (bias !== undefined) {
    if (bias.length !== E) throw new Error(`bias length ${bias.length} != nRoutedExperts=${E}`);
    for (let e = 0; e < E; e++) {
      if (!Number.isFinite(bias[e])) throw new Error(`bias of expert ${e} is not finite (${bias[e]})`);
    }
  }
  for (let t = 0; t < T; t++) {
    for (let e = 0; e < E; e++) {
      if (Number.isNaN(scores[t * E + e])) throw new Error(`gate scores of token ${t} contain NaN (expert ${e})`);
    }
  }
  return T;
}

/** true when (va, ia) ranks before (vb, ib): larger value first, then lower index. */
function before(va: number, ia: number, vb: number, ib: number): boolean {
  return va > vb || (va === vb && ia < ib);
}

export function frozenLimitedRoute(scores: Float32Array, spec: LimitedSpec): RouteResult {
  const { E, k, nUnits, keepUnits, rule, normTopkProb, routedScalingFactor, bias } = spec;
  const T = checkScoresAndBias(scores, E, bias);
  const unitSize = E / nUnits;
  const unitTop = Math.min(spec.unitTop, unitSize);
  const indices = new Int32Array(T * k);
  const weights = new Float32Array(T * k);

  const choice = new Float32Array(E);
  const unitScore = new Float32Array(nUnits);
  const unitOrder = new Int32Array(nUnits);
  const allowed = new Uint8Array(nUnits);
  const topVals = new Float64Array(Math.max(unitTop, 1));
  const selIdx = new Int32Array(k);
  const selVal = new Float64Array(k);
  const limit = nUnits > 1 && keepUnits < nUnits;

  for (let t = 0; t < T; t++) {
    const base = t * E;
    for (let e = 0; e < E; e++) {
      choice[e] =
        bias === undefined ? (scores[base + e] as number) : f32((scores[base + e] as number) + (bias[e] as number));
    }

    if (limit) {
      for (let u = 0; u < nUnits; u++) {
        const u0 = u * unitSize;
        let sc: number;
        if (rule === 'max') {
          sc = -Infinity;
          for (let j = 0; j < unitSize; j++) sc = Math.max(sc, choice[u0 + j] as number);
        } else {
          // top-`unitTop` values of the unit by insertion, then their float32 sum in descending order
          let n = 0;
          for (let j = 0; j < unitSize; j++) {
            const v = choice[u0 + j] as number;
            if (n < unitTop) {
              let p = n++;
              while (p > 0 && (topVals[p - 1] as number) < v) {
                topVals[p] = topVals[p - 1] as number;
                p--;
              }
              topVals[p] = v;
            } else if (v > (topVals[unitTop - 1] as number)) {
              let p = unitTop - 1;
              while (p > 0 && (topVals[p - 1] as number) < v) {
                topVals[p] = topVals[p - 1] as number;
                p--;
              }
              topVals[p] = v;
            }
          }
          sc = 0;
          for (let j = 0; j < n; j++) sc = f32(sc + (topVals[j] as number));
        }
        unitScore[u] = sc;
      }
      // keep the top `keepUnits` units (ties: lowest unit id)
      for (let u = 0; u < nUnits; u++) unitOrder[u] = u;
      for (let i = 1; i < nUnits; i++) {
        const u = unitOrder[i] as number;
        const v = unitScore[u] as number;
        let p = i;
        while (p > 0 && before(v, u, unitScore[unitOrder[p - 1] as number] as number, unitOrder[p - 1] as number)) {
          unitOrder[p] = unitOrder[p - 1] as number;
          p--;
        }
        unitOrder[p] = u;
      }
      allowed.fill(0);
      for (let i = 0; i < keepUnits; i++) allowed[unitOrder[i] as number] = 1;
    }

    // top-k over the allowed experts, kept sorted (value desc, index asc)
    let n = 0;
    for (let e = 0; e < E; e++) {
      if (limit && allowed[(e / unitSize) | 0] === 0) continue;
      const v = choice[e] as number;
      if (n === k && !before(v, e, selVal[k - 1] as number, selIdx[k - 1] as number)) continue;
      let p = n < k ? n++ : k - 1;
      while (p > 0 && before(v, e, selVal[p - 1] as number, selIdx[p - 1] as number)) {
        selVal[p] = selVal[p - 1] as number;
        selIdx[p] = selIdx[p - 1] as number;
        p--;
      }
      selVal[p] = v;
      selIdx[p] = e;
    }
    if (n < k) throw new Error(`internal: only ${n} experts available for token ${t}`);

    let sum = 0;
    for (let j = 0; j < k; j++) {
      const w = scores[base + (selIdx[j] as number)] as number;
      weights[t * k + j] = w;
      indices[t * k + j] = selIdx[j] as number;
      sum = f32(sum + w);
    }
    const denom = f32(sum + 1e-20);
    for (let j = 0; j < k; j++) {
      let w = weights[t * k + j] as number;
      if (normTopkProb) w = f32(w / denom);
      weights[t * k + j] = w * routedScalingFactor;
    }
  }
  return { indices, weights, scores, numTokens: T, k };
}
