import { describe, expect, it } from 'vitest';
import {
  computeScores,
  gateRoute,
  gateRouteFromScores,
  nodeLimitedRouteFromScores,
  nodesPerToken,
  type GateConfig,
} from '../src/index';
import { normal, refRoute, rng, rows } from './helpers';

const logit = (p: number) => Math.log(p / (1 - p));

describe('gate: worked example of the reference (8 experts, 4 groups of 2, keep 2, top-2)', () => {
  const s = new Float32Array([0.9, 0.1, 0.2, 0.3, 0.8, 0.7, 0.4, 0.6]);
  const bias = new Float32Array([0, 0, 0.5, 0, -0.3, 0, 0, 0.05]);
  const cfg: GateConfig = {
    nRoutedExperts: 8,
    numExpertsPerTok: 2,
    nGroup: 4,
    topkGroup: 2,
    normTopkProb: true,
    routedScalingFactor: 1,
    scoringFunc: 'sigmoid',
    bias,
  };

  it('picks experts [5, 7] with weights [0.5384615, 0.4615385]', () => {
    const r = gateRouteFromScores(s, cfg);
    expect(Array.from(r.indices)).toEqual([5, 7]);
    expect(r.weights[0]).toBeCloseTo(0.5384615, 6);
    expect(r.weights[1]).toBeCloseTo(0.4615385, 6);
  });

  it('times route scale 2.5 gives [1.3461538, 1.1538462]', () => {
    const r = gateRouteFromScores(s, { ...cfg, routedScalingFactor: 2.5 });
    expect(Array.from(r.indices)).toEqual([5, 7]);
    expect(r.weights[0]).toBeCloseTo(1.3461538, 6);
    expect(r.weights[1]).toBeCloseTo(1.1538462, 6);
  });

  it('keeps groups {2, 3}: with k = 4 exactly the experts of groups 2 and 3 are chosen', () => {
    const r = gateRouteFromScores(s, { ...cfg, numExpertsPerTok: 4 });
    // choice scores 4:.5 5:.7 6:.4 7:.65, by descending choice
    expect(Array.from(r.indices)).toEqual([5, 7, 4, 6]);
  });

  it('the same from logits (sigmoid in float32)', () => {
    const logits = new Float32Array(Array.from(s, logit));
    const r = gateRoute(logits, { ...cfg, routedScalingFactor: 2.5 });
    expect(Array.from(r.indices)).toEqual([5, 7]);
    expect(r.weights[0]).toBeCloseTo(1.3461538, 5);
    expect(r.weights[1]).toBeCloseTo(1.1538462, 5);
    for (let e = 0; e < 8; e++) expect(r.scores[e]).toBeCloseTo(s[e] as number, 6);
  });
});

describe('gate: random inputs vs a brute-force float64 reference over all group subsets', () => {
  const cases = [
    { T: 50, E: 8, nGroup: 4, topkGroup: 2, k: 2 },
    { T: 40, E: 16, nGroup: 4, topkGroup: 2, k: 4 },
    { T: 30, E: 32, nGroup: 8, topkGroup: 4, k: 8 },
    { T: 30, E: 64, nGroup: 8, topkGroup: 3, k: 6 },
    { T: 20, E: 256, nGroup: 8, topkGroup: 4, k: 8 }, // V3's shape
    { T: 20, E: 12, nGroup: 1, topkGroup: 1, k: 3 }, // no group limit
    { T: 20, E: 12, nGroup: 6, topkGroup: 6, k: 5 }, // keep all groups
    { T: 20, E: 9, nGroup: 3, topkGroup: 1, k: 3 }, // k = all experts of the kept group
  ];
  for (const c of cases) {
    for (const withBias of [true, false]) {
      it(`T=${c.T} E=${c.E} groups=${c.nGroup} keep=${c.topkGroup} k=${c.k} bias=${withBias}`, () => {
        const r = rng(c.E * 1000 + c.k * 10 + (withBias ? 1 : 0));
        const logits = new Float32Array(c.T * c.E).map(() => 2 * normal(r));
        const bias = withBias ? new Float32Array(c.E).map(() => 0.3 * normal(r)) : undefined;
        const cfg: GateConfig = {
          nRoutedExperts: c.E,
          numExpertsPerTok: c.k,
          nGroup: c.nGroup,
          topkGroup: c.topkGroup,
          normTopkProb: true,
          routedScalingFactor: 2.5,
          scoringFunc: 'sigmoid',
          bias,
        };
        const out = gateRoute(logits, cfg);
        const ref = refRoute(out.scores, {
          E: c.E,
          k: c.k,
          nUnits: c.nGroup,
          keepUnits: c.topkGroup,
          unitRule: withBias ? 2 : 'max',
          normTopkProb: true,
          scale: 2.5,
          bias,
        });
        expect(rows(out.indices, c.k)).toEqual(ref.indices);
        const w = rows(out.weights, c.k);
        ref.weights.forEach((rw, t) => rw.forEach((v, j) => expect(w[t]![j]).toBeCloseTo(v, 5)));
        // scores are float32 sigmoids of the logits
        for (let i = 0; i < logits.length; i += 7) {
          expect(out.scores[i]).toBeCloseTo(1 / (1 + Math.exp(-(logits[i] as number))), 6);
        }
      });
    }
  }

  it('groupScore can be forced: top-2 sum without bias, max with bias', () => {
    const r = rng(7);
    const E = 32;
    const scores = new Float32Array(25 * E).map(() => r());
    const bias = new Float32Array(E).map(() => 0.1 * normal(r));
    const base = {
      nRoutedExperts: E,
      numExpertsPerTok: 4,
      nGroup: 8,
      topkGroup: 2,
      normTopkProb: true,
      routedScalingFactor: 1,
      scoringFunc: 'sigmoid' as const,
    };
    const a = gateRouteFromScores(scores, { ...base, groupScore: 'top2sum' });
    const refA = refRoute(scores, { E, k: 4, nUnits: 8, keepUnits: 2, unitRule: 2, normTopkProb: true, scale: 1 });
    expect(rows(a.indices, 4)).toEqual(refA.indices);
    const b = gateRouteFromScores(scores, { ...base, bias, groupScore: 'max' });
    const refB = refRoute(scores, {
      E,
      k: 4,
      nUnits: 8,
      keepUnits: 2,
      unitRule: 'max',
      normTopkProb: true,
      scale: 1,
      bias,
    });
    expect(rows(b.indices, 4)).toEqual(refB.indices);
  });
});

describe('gate: softmax scoring (V2 style)', () => {
  it('softmax rows sum to 1, group score = max, no normalization', () => {
    const r = rng(42);
    const T = 30;
    const E = 16;
    const logits = new Float32Array(T * E).map(() => 3 * normal(r));
    const out = gateRoute(logits, {
      nRoutedExperts: E,
      numExpertsPerTok: 3,
      nGroup: 4,
      topkGroup: 2,
      normTopkProb: false,
      routedScalingFactor: 16,
      scoringFunc: 'softmax',
    });
    for (let t = 0; t < T; t++) {
      let sum = 0;
      let m = -Infinity;
      for (let e = 0; e < E; e++) m = Math.max(m, logits[t * E + e] as number);
      let z = 0;
      for (let e = 0; e < E; e++) z += Math.exp((logits[t * E + e] as number) - m);
      for (let e = 0; e < E; e++) {
        const p = out.scores[t * E + e] as number;
        sum += p;
        expect(p).toBeCloseTo(Math.exp((logits[t * E + e] as number) - m) / z, 6);
      }
      expect(sum).toBeCloseTo(1, 5);
    }
    const ref = refRoute(out.scores, {
      E,
      k: 3,
      nUnits: 4,
      keepUnits: 2,
      unitRule: 'max',
      normTopkProb: false,
      scale: 16,
    });
    expect(rows(out.indices, 3)).toEqual(ref.indices);
    rows(out.weights, 3).forEach((w, t) => w.forEach((v, j) => expect(v).toBeCloseTo(ref.weights[t]![j]!, 4)));
  });

  it('softmax with normTopkProb normalizes too', () => {
    const logits = new Float32Array([1, 2, 3, 4]);
    const out = gateRoute(logits, {
      nRoutedExperts: 4,
      numExpertsPerTok: 2,
      nGroup: 1,
      topkGroup: 1,
      normTopkProb: true,
      routedScalingFactor: 1,
      scoringFunc: 'softmax',
    });
    expect(Array.from(out.indices)).toEqual([3, 2]);
    expect(out.weights[0]! + out.weights[1]!).toBeCloseTo(1, 6);
    expect(out.weights[0]).toBeCloseTo(Math.E / (1 + Math.E), 6);
  });

  it('computeScores handles extreme logits', () => {
    const s = computeScores(new Float32Array([-1000, 0, 1000, 88]), 4, 'sigmoid');
    expect(Array.from(s)).toEqual([0, 0.5, 1, 1]);
    const p = computeScores(new Float32Array([1000, 1000, -1000, 0]), 4, 'softmax');
    expect(Array.from(p)).toEqual([0.5, 0.5, 0, 0]);
  });
});

describe('gate: deterministic ties (lowest index wins)', () => {
  const base = {
    nRoutedExperts: 8,
    nGroup: 4,
    topkGroup: 2,
    normTopkProb: true,
    routedScalingFactor: 1,
    scoringFunc: 'sigmoid' as const,
  };

  it('all-equal scores pick groups 0, 1 and experts in index order', () => {
    const r = gateRouteFromScores(new Float32Array(8).fill(0.5), {
      ...base,
      numExpertsPerTok: 3,
      bias: new Float32Array(8),
    });
    expect(Array.from(r.indices)).toEqual([0, 1, 2]);
    expect(Array.from(r.weights).map((w) => Math.round(w * 1e6) / 1e6)).toEqual([0.333333, 0.333333, 0.333333]);
  });

  it('tied groups: the lower group id is kept', () => {
    // group sums: g0 .3, g1 1.0, g2 1.0, g3 1.0 → keep g1, g2 (tie with g3 broken by id)
    const s = new Float32Array([0.1, 0.2, 0.5, 0.5, 0.6, 0.4, 0.4, 0.6]);
    const r = gateRouteFromScores(s, { ...base, numExpertsPerTok: 4, bias: new Float32Array(8) });
    expect(Array.from(r.indices)).toEqual([4, 2, 3, 5]);
  });

  it('tied experts across kept groups: ordered by index', () => {
    const s = new Float32Array([0.1, 0.1, 0.7, 0.2, 0.1, 0.1, 0.2, 0.7]);
    const r = gateRouteFromScores(s, { ...base, numExpertsPerTok: 4, bias: new Float32Array(8) });
    expect(Array.from(r.indices)).toEqual([2, 7, 3, 6]);
  });

  it('ties in the group max rule', () => {
    const s = new Float32Array([0.9, 0.1, 0.2, 0.9, 0.9, 0.9, 0.3, 0.3]);
    const r = gateRouteFromScores(s, { ...base, numExpertsPerTok: 3 });
    // max rule (no bias): g0 .9, g1 .9, g2 .9, g3 .3 → keep g0, g1
    expect(Array.from(r.indices)).toEqual([0, 3, 2]);
  });
});

describe('gate: validation', () => {
  const cfg: GateConfig = {
    nRoutedExperts: 8,
    numExpertsPerTok: 2,
    nGroup: 4,
    topkGroup: 2,
    normTopkProb: true,
    routedScalingFactor: 1,
    scoringFunc: 'sigmoid',
  };
  const x = new Float32Array(16);

  it('E not divisible by nGroup', () => {
    expect(() => gateRoute(x, { ...cfg, nGroup: 3, topkGroup: 1 })).toThrow(/not divisible by nGroup=3/);
  });
  it('topkGroup > nGroup', () => {
    expect(() => gateRoute(x, { ...cfg, topkGroup: 5 })).toThrow(/topkGroup=5 > nGroup=4/);
  });
  it('k larger than the experts in the kept groups', () => {
    expect(() => gateRoute(x, { ...cfg, numExpertsPerTok: 5 })).toThrow(
      /numExpertsPerTok=5 > experts in the kept groups .* = 4/,
    );
  });
  it('NaN logits name the token', () => {
    const bad = new Float32Array(32);
    bad[3 * 8 + 5] = NaN;
    expect(() => gateRoute(bad, cfg)).toThrow(/token 3.*expert 5/);
    expect(() => gateRouteFromScores(bad, cfg)).toThrow(/scores of token 3/);
  });
  it('wrong lengths', () => {
    expect(() => gateRoute(new Float32Array(12), cfg)).toThrow(/not a multiple of nRoutedExperts=8/);
    expect(() => gateRoute(x, { ...cfg, bias: new Float32Array(7) })).toThrow(/bias length 7 != nRoutedExperts=8/);
  });
  it('non-integer / bad parameters', () => {
    expect(() => gateRoute(x, { ...cfg, numExpertsPerTok: 0 })).toThrow(/numExpertsPerTok/);
    expect(() => gateRoute(x, { ...cfg, scoringFunc: 'relu' as never })).toThrow(/scoringFunc/);
    expect(() => gateRoute(x, { ...cfg, bias: new Float32Array(8).fill(Infinity) })).toThrow(/bias of expert 0/);
  });
});

describe('node-limited routing', () => {
  it('equals group-limited routing when groups = nodes and K/M = 2 (K=8, M=4 as in V3)', () => {
    const r = rng(2024);
    const E = 64;
    const T = 200;
    const logits = new Float32Array(T * E).map(() => 1.5 * normal(r));
    const bias = new Float32Array(E).map(() => 0.2 * normal(r));
    const scores = computeScores(logits, E, 'sigmoid');
    const common = {
      nRoutedExperts: E,
      numExpertsPerTok: 8,
      normTopkProb: true,
      routedScalingFactor: 2.5,
      scoringFunc: 'sigmoid' as const,
      bias,
    };
    const node = nodeLimitedRouteFromScores(scores, { ...common, nNodes: 8, maxNodesPerToken: 4 });
    const group = gateRouteFromScores(scores, { ...common, nGroup: 8, topkGroup: 4 });
    expect(Array.from(node.indices)).toEqual(Array.from(group.indices));
    expect(Array.from(node.weights)).toEqual(Array.from(group.weights));
    const ref = refRoute(scores, {
      E,
      k: 8,
      nUnits: 8,
      keepUnits: 4,
      unitRule: 2,
      normTopkProb: true,
      scale: 2.5,
      bias,
    });
    expect(rows(node.indices, 8)).toEqual(ref.indices);
    for (const n of nodesPerToken(node.indices, 8, E, 8)) expect(n).toBeLessThanOrEqual(4);
  });

  it('ranks nodes by the top-(K/M) sum for other K/M (K=9, M=3 → top-3)', () => {
    const r = rng(99);
    const E = 48;
    const scores = new Float32Array(60 * E).map(() => r());
    const out = nodeLimitedRouteFromScores(scores, {
      nRoutedExperts: E,
      numExpertsPerTok: 9,
      nNodes: 6,
      maxNodesPerToken: 3,
      normTopkProb: true,
      routedScalingFactor: 1,
      scoringFunc: 'sigmoid',
    });
    const ref = refRoute(scores, { E, k: 9, nUnits: 6, keepUnits: 3, unitRule: 3, normTopkProb: true, scale: 1 });
    expect(rows(out.indices, 9)).toEqual(ref.indices);
  });

  it('differs from plain top-K when the best experts are spread over many nodes', () => {
    // 8 nodes of 8 experts; each node has one strong expert (0.90 - node/100) and small others,
    // except nodes 6 and 7 which have several medium experts.
    const E = 64;
    const s = new Float32Array(E).fill(0.05);
    for (let n = 0; n < 8; n++) s[n * 8] = 0.9 - n / 100;
    for (let j = 1; j < 4; j++) {
      s[6 * 8 + j] = 0.6;
      s[7 * 8 + j] = 0.55;
    }
    const common = {
      nRoutedExperts: E,
      numExpertsPerTok: 8,
      normTopkProb: true,
      routedScalingFactor: 1,
      scoringFunc: 'sigmoid' as const,
    };
    const plain = gateRouteFromScores(s, { ...common, nGroup: 1, topkGroup: 1 });
    const limited = nodeLimitedRouteFromScores(s, { ...common, nNodes: 8, maxNodesPerToken: 4 });
    expect(Array.from(plain.indices)).toEqual([0, 8, 16, 24, 32, 40, 48, 56]);
    expect(nodesPerToken(plain.indices, 8, E, 8)[0]).toBe(8);
    // node scores (top-2 sums): n0 .95, n1 .94, ..., n5 .90, n6 1.44, n7 1.38 → nodes 6, 7, 0, 1
    expect(Array.from(limited.indices)).toEqual([0, 8, 48, 56, 49, 50, 51, 57]);
    expect(nodesPerToken(limited.indices, 8, E, 8)[0]).toBe(4);
  });

  it('validation', () => {
    const s = new Float32Array(64);
    const common = { nRoutedExperts: 64, normTopkProb: true, routedScalingFactor: 1, scoringFunc: 'sigmoid' as const };
    expect(() =>
      nodeLimitedRouteFromScores(s, { ...common, numExpertsPerTok: 8, nNodes: 7, maxNodesPerToken: 4 }),
    ).toThrow(/nNodes=7/);
    expect(() =>
      nodeLimitedRouteFromScores(s, { ...common, numExpertsPerTok: 8, nNodes: 8, maxNodesPerToken: 9 }),
    ).toThrow(/maxNodesPerToken=9 > nNodes=8/);
    expect(() =>
      nodeLimitedRouteFromScores(s, { ...common, numExpertsPerTok: 7, nNodes: 8, maxNodesPerToken: 4 }),
    ).toThrow(/topPerNode/);
    expect(() =>
      nodeLimitedRouteFromScores(s, { ...common, numExpertsPerTok: 33, nNodes: 8, maxNodesPerToken: 4, topPerNode: 2 }),
    ).toThrow(/numExpertsPerTok=33 > experts on the kept nodes/);
  });
});
