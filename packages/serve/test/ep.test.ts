// Expert-parallel serving over 2 and 4 processes (tcp) against the single-process engine: same
// greedy outputs (also with the two-micro-batch overlap) with the experts (the shared one as a 9th-per-token routed expert) spread over the
// ranks; an EPLB re-placement during a load test changes the placement without a failed request,
// and the per-rank load imbalance (max/mean rows computed per rank) afterwards is lower than before.
import { describe, expect, it } from 'vitest';
import { imbalance } from '../src/index.js';
import { runJob } from './ep-helpers.js';
import { drain, greedy, makeCore, prompt } from './helpers.js';

const lengths = [3, 17, 8, 30, 1, 12, 25, 5];
const maxNew = [6, 4, 9, 3, 7, 5, 4, 8];
const prompts = lengths.map((n, i) => prompt(n, i + 11));

async function single(): Promise<Record<string, number[]>> {
  const core = makeCore({ maxBatchedTokens: 64, maxRunningSeqs: 16 });
  prompts.forEach((p, i) => core.add({ id: `r0-${i}`, promptIds: p, params: greedy(maxNew[i]!, { ignoreEos: true }) }));
  const { tokens } = await drain(core);
  return Object.fromEntries(tokens);
}

describe('expert-parallel serving (processes, tcp)', () => {
  for (const [world, overlap] of [
    [2, false],
    [4, false],
    [2, true],
  ] as const) {
    it(`${world} ranks${overlap ? ' with two-micro-batch overlap' : ''} equal the single-process engine`, async () => {
      const want = await single();
      const results = await runJob(world, { prompts, maxNew, twoMicroBatches: overlap });
      const got = Object.assign({}, ...results.map((r) => r.tokens)) as Record<string, number[]>;
      expect(got).toEqual(want);
      // every rank computed expert rows (the experts really are spread)
      for (const row of results[0]!.finalRows) for (const n of row) expect(n).toBeGreaterThan(0);
    }, 180_000);
  }

  it('EPLB re-placement between rounds of a load test: no failed request, placement changed, imbalance lower', async () => {
    const want = await single();
    // the same prompts round after round: a few experts stay hot
    const results = await runJob(2, { prompts, maxNew, slotsPerRank: 12, rounds: 3, replaceEachRound: true });
    for (const r of results) expect(r.failed).toEqual([]);
    const got = Object.assign({}, ...results.map((r) => r.tokens)) as Record<string, number[]>;
    for (let round = 0; round < 3; round++)
      for (let i = 0; i < prompts.length; i++) expect(got[`r${round}-${i}`]).toEqual(want[`r0-${i}`]);
    const reps = results[0]!.replacements;
    expect(reps.length).toBe(2);
    // replacement k measured round k: round 0 under round-robin, round 1 under EPLB's placement
    const before = imbalance(reps[0]!.rankRows);
    const after = imbalance(reps[1]!.rankRows);
    expect(after).toBeLessThan(before);
    expect(reps[0]!.placement.replicas.flat().filter((r) => r.length > 1).length).toBeGreaterThan(0);
    console.log(
      `EP 2 ranks: per-rank rows max/mean ${before.toFixed(3)} (round-robin) -> ${after.toFixed(3)} (EPLB, 12 slots/rank)`,
    );
  }, 180_000);

  it('timed re-placements while requests run (every 100 ms): outputs unchanged, none failed', async () => {
    const want = await single();
    const results = await runJob(2, { prompts, maxNew, slotsPerRank: 12, rounds: 3, replaceIntervalMs: 100 });
    for (const r of results) expect(r.failed).toEqual([]);
    const got = Object.assign({}, ...results.map((r) => r.tokens)) as Record<string, number[]>;
    for (let round = 0; round < 3; round++)
      for (let i = 0; i < prompts.length; i++) expect(got[`r${round}-${i}`]).toEqual(want[`r0-${i}`]);
    expect(results[0]!.replacements.some((r) => r.duringRequests)).toBe(true);
  }, 180_000);
});
