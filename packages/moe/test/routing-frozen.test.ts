// The router's selection (routing.ts's limitedRoute: the top-2 group score in two registers, the kept
// groups by rank, the top-k by `>` alone) against the loop it replaced, frozen in frozen-route.ts: the
// same experts in the same order and the same weight bits, on random, tied, zero-signed and infinite
// scores, for group-limited and node-limited routing.
import { expectSameBits } from '@dsv3/core/testing';
import { describe, expect, it } from 'vitest';
import { gateRouteFromScores, nodeLimitedRouteFromScores, type GroupScoreRule, type RouteResult } from '../src/index';
import type { LimitedSpec } from '../src/routing';
import { frozenLimitedRoute } from './frozen-route';
import { normal, rng } from './helpers';

interface Shape {
  T: number;
  E: number;
  units: number;
  keep: number;
  k: number;
}

const shapes: Shape[] = [
  { T: 64, E: 64, units: 8, keep: 4, k: 6 }, // V3-mini
  { T: 16, E: 256, units: 8, keep: 4, k: 8 }, // V3
  { T: 40, E: 16, units: 4, keep: 2, k: 4 },
  { T: 40, E: 9, units: 3, keep: 1, k: 3 }, // k = the kept group's experts
  { T: 40, E: 12, units: 1, keep: 1, k: 3 }, // no limit
  { T: 40, E: 12, units: 6, keep: 6, k: 5 }, // every group kept
  { T: 40, E: 8, units: 8, keep: 3, k: 2 }, // groups of one expert
  { T: 40, E: 24, units: 8, keep: 5, k: 7 }, // groups of three
];

/** Score draws: smooth, from a few values (ties everywhere), with signed zeros, with infinities. */
const draws: Record<string, (r: () => number) => number> = {
  normal: (r) => 1 / (1 + Math.exp(-2 * normal(r))),
  ties: (r) => Math.floor(r() * 4) / 4,
  zeros: (r) => [0, -0, 0.5, -0.5][Math.floor(r() * 4)]!,
  infinite: (r) => [Infinity, -Infinity, -Infinity, -Infinity, 0.25][Math.floor(r() * 5)]!,
};

/** The same experts in the same order, and the same weights bit for bit (NaN payloads included). */
function expectSameRoute(got: RouteResult, want: RouteResult): void {
  expectSameBits(got.indices, want.indices, 'expert indices');
  expectSameBits(got.weights, want.weights, 'route weights', { nan: 'bits' });
}

function frozenSpec(s: Shape, rule: GroupScoreRule | 'topsum', unitTop: number, bias?: Float32Array): LimitedSpec {
  return {
    E: s.E,
    k: s.k,
    nUnits: s.units,
    keepUnits: s.keep,
    rule,
    unitTop,
    normTopkProb: true,
    routedScalingFactor: 2.5,
    bias,
  };
}

describe('routing: the selection equals the frozen loop bit for bit', () => {
  for (const s of shapes) {
    for (const [name, draw] of Object.entries(draws)) {
      it(`${name} scores, T=${s.T} E=${s.E} units=${s.units} keep=${s.keep} k=${s.k}`, () => {
        const r = rng(s.E * 131 + s.k * 7 + name.length);
        const scores = new Float32Array(s.T * s.E).map(() => draw(r));
        const biases = [
          undefined,
          new Float32Array(s.E).map(() => 0.1 * normal(r)),
          new Float32Array(s.E).map(() => Math.floor(r() * 3) / 8), // ties between biased scores
        ];
        for (const bias of biases) {
          for (const groupScore of ['top2sum', 'max'] as const) {
            const cfg = {
              nRoutedExperts: s.E,
              numExpertsPerTok: s.k,
              nGroup: s.units,
              topkGroup: s.keep,
              normTopkProb: true,
              routedScalingFactor: 2.5,
              scoringFunc: 'sigmoid' as const,
              bias,
              groupScore,
            };
            expectSameRoute(
              gateRouteFromScores(scores, cfg),
              frozenLimitedRoute(scores, frozenSpec(s, groupScore, groupScore === 'max' ? 1 : 2, bias)),
            );
          }
          for (const top of [1, 2, 3]) {
            const node = {
              nRoutedExperts: s.E,
              numExpertsPerTok: s.k,
              nNodes: s.units,
              maxNodesPerToken: s.keep,
              topPerNode: top,
              normTopkProb: true,
              routedScalingFactor: 2.5,
              scoringFunc: 'sigmoid' as const,
              bias,
            };
            expectSameRoute(
              nodeLimitedRouteFromScores(scores, node),
              frozenLimitedRoute(scores, frozenSpec(s, 'topsum', top, bias)),
            );
          }
        }
      });
    }
  }

  it('a group scored NaN (+∞ and −∞ its top two) keeps the groups the insertion order keeps', () => {
    // group 0: +inf, -inf → NaN; group 1: 0.8 (ahead of group 2 by rank, kept there); group 2: 0.9;
    // group 3: 0.2. The insertion order keeps {0, 2} (nothing ranks before a NaN), so expert 4, not 2.
    const scores = new Float32Array([Infinity, -Infinity, 0.8, 0, 0.45, 0.45, 0.1, 0.1]);
    const s: Shape = { T: 1, E: 8, units: 4, keep: 2, k: 2 };
    const cfg = {
      nRoutedExperts: 8,
      numExpertsPerTok: 2,
      nGroup: 4,
      topkGroup: 2,
      normTopkProb: false,
      routedScalingFactor: 1,
      scoringFunc: 'sigmoid' as const,
      groupScore: 'top2sum' as const,
    };
    const got = gateRouteFromScores(scores, cfg);
    expect(Array.from(got.indices)).toEqual([0, 4]);
    expectSameRoute(
      got,
      frozenLimitedRoute(scores, { ...frozenSpec(s, 'top2sum', 2), normTopkProb: false, routedScalingFactor: 1 }),
    );
  });

  it('names the first token holding a NaN, as the frozen check did', () => {
    const scores = new Float32Array(4 * 8).fill(0.5);
    scores[2 * 8 + 5] = Number.NaN;
    scores[3 * 8 + 1] = Number.NaN;
    const cfg = {
      nRoutedExperts: 8,
      numExpertsPerTok: 2,
      nGroup: 4,
      topkGroup: 2,
      normTopkProb: true,
      routedScalingFactor: 1,
      scoringFunc: 'sigmoid' as const,
    };
    expect(() => gateRouteFromScores(scores, cfg)).toThrow('gate scores of token 2 contain NaN (expert 5)');
    expect(() => frozenLimitedRoute(scores, frozenSpec({ T: 4, E: 8, units: 4, keep: 2, k: 2 }, 'max', 1))).toThrow(
      'gate scores of token 2 contain NaN (expert 5)',
    );
  });
});
