import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { balancedPacking, gpuLoads, rebalanceExperts, replicateExperts, type RebalanceResult } from '../src/index';
import { rng } from './helpers';

interface Fixture {
  weight: number[][];
  num_replicas: number;
  num_groups: number;
  num_nodes: number;
  num_gpus: number;
  phy2log: number[][];
  logcnt: number[][];
  max_over_mean_gpu_load: number[];
}

const fixture = JSON.parse(
  readFileSync(new URL('./fixtures/eplb-readme-example.json', import.meta.url), 'utf8'),
) as Fixture;

function checkConsistency(res: RebalanceResult, E: number, R: number): void {
  const maxCnt = Math.max(...res.logcnt.flat());
  res.phy2log.forEach((p2l, l) => {
    const cnt = res.logcnt[l]!;
    const l2p = res.log2phy[l]!;
    expect(p2l.length).toBe(R);
    expect(cnt.length).toBe(E);
    expect(l2p.length).toBe(E);
    // every expert at least once, counts add up, phy2log agrees with logcnt
    const seen = new Array<number>(E).fill(0);
    for (const e of p2l) {
      expect(Number.isInteger(e) && e >= 0 && e < E).toBe(true);
      seen[e]!++;
    }
    expect(seen).toEqual(cnt);
    for (const c of cnt) expect(c).toBeGreaterThanOrEqual(1);
    expect(cnt.reduce((a, b) => a + b, 0)).toBe(R);
    // log2phy: replica r of e sits in slot log2phy[e][r], padded with -1; every slot appears once
    const slots = new Array<number>(R).fill(0);
    l2p.forEach((reps, e) => {
      expect(reps.length).toBe(maxCnt);
      reps.forEach((s, rank) => {
        if (rank < cnt[e]!) {
          expect(p2l[s]).toBe(e);
          expect(res.phyrank[l]![s]).toBe(rank);
          slots[s]!++;
        } else {
          expect(s).toBe(-1);
        }
      });
    });
    expect(slots.every((v) => v === 1)).toBe(true);
  });
}

describe('EPLB: DeepSeek README example (shared fixture)', () => {
  const res = rebalanceExperts(
    fixture.weight,
    fixture.num_replicas,
    fixture.num_groups,
    fixture.num_nodes,
    fixture.num_gpus,
  );

  it('reproduces phy2log and logcnt exactly', () => {
    expect(res.policy).toBe('hierarchical');
    expect(res.phy2log).toEqual(fixture.phy2log);
    expect(res.logcnt).toEqual(fixture.logcnt);
  });

  it('reproduces the max/mean GPU loads', () => {
    const stats = gpuLoads(fixture.weight, res.phy2log, res.logcnt, fixture.num_gpus);
    stats.maxOverMean.forEach((v, l) => expect(v).toBeCloseTo(fixture.max_over_mean_gpu_load[l]!, 12));
    expect(stats.loads[0]!.length).toBe(8);
    // total GPU load equals the total expert load
    stats.loads.forEach((g, l) => {
      expect(g.reduce((a, b) => a + b, 0)).toBeCloseTo(
        fixture.weight[l]!.reduce((a, b) => a + b, 0),
        9,
      );
    });
  });

  it('log2phy is consistent with phy2log', () => {
    checkConsistency(res, 12, 16);
    // DeepSeek's README lists the first layer's log2phy as well
    expect(res.log2phy[0]!.slice(0, 3)).toEqual([
      [12, -1],
      [15, 13],
      [11, -1],
    ]);
  });

  it('accepts Float64Array rows', () => {
    const r2 = rebalanceExperts(
      fixture.weight.map((w) => Float64Array.from(w)),
      16,
      4,
      2,
      8,
    );
    expect(r2.phy2log).toEqual(fixture.phy2log);
  });
});

describe('EPLB building blocks', () => {
  it('balanced packing: descending items, lightest non-full pack, ties to the lowest pack', () => {
    // 5→p0, 4→p1, 3→p1 (4<5), 2→p0 (5<7), 1→p0 (tie 7/7), 0→p1 (p0 full)
    const { packIndex, rankInPack } = balancedPacking([5, 4, 3, 2, 1, 0], 2);
    expect(Array.from(packIndex)).toEqual([0, 1, 1, 0, 0, 1]);
    expect(Array.from(rankInPack)).toEqual([0, 0, 1, 1, 2, 2]);
    // equal weights: index order, each to the lowest of the tied packs
    expect(Array.from(balancedPacking([1, 1, 1, 1], 2).packIndex)).toEqual([0, 1, 0, 1]);
    // one item per pack: identity, whatever the weights
    expect(Array.from(balancedPacking([1, 9, 3], 3).packIndex)).toEqual([0, 1, 2]);
    expect(() => balancedPacking([1, 2, 3], 2)).toThrow(/evenly/);
  });

  it('replication: each extra replica to argmax load/count, ties to the lowest id', () => {
    const r = replicateExperts([10, 10, 3], 6);
    // extras: e0 (10 vs 10), e1 (10 vs 5), then 5,5,3 → e0
    expect(Array.from(r.phy2log)).toEqual([0, 1, 2, 0, 1, 0]);
    expect(Array.from(r.rank)).toEqual([0, 0, 0, 1, 1, 2]);
    expect(Array.from(r.logcnt)).toEqual([3, 2, 1]);
    expect(() => replicateExperts([1, 2, 3], 2)).toThrow(/cannot replicate/);
  });

  it('a hot expert gets most of the redundant replicas', () => {
    const w = [[1000, 10, 10, 10, 10, 10, 10, 10]];
    const res = rebalanceExperts(w, 16, 1, 1, 4);
    expect(res.policy).toBe('hierarchical');
    expect(res.logcnt[0]![0]).toBe(9);
    const stats = gpuLoads(w, res.phy2log, res.logcnt, 4);
    // 9 replicas of 111.1 + 7 of 10 on 4 GPUs: one GPU must take 3 hot replicas (333 + 10 vs mean 267.5)
    expect(stats.maxOverMean[0]!).toBeCloseTo(((3 * 1000) / 9 + 10) / (1070 / 4), 9);
    // without redundancy one GPU would carry the hot expert alone: 1000 + 10 vs 267.5
    const plain = rebalanceExperts(w, 8, 1, 1, 4);
    expect(gpuLoads(w, plain.phy2log, plain.logcnt, 4).maxOverMean[0]!).toBeCloseTo(1010 / 267.5, 9);
  });
});

describe('EPLB properties on random loads', () => {
  interface Case {
    E: number;
    R: number;
    groups: number;
    nodes: number;
    gpus: number;
  }
  const cases: Case[] = [];
  const pick = rng(12345);
  for (let i = 0; i < 60; i++) {
    const hierarchical = i % 2 === 0;
    // the global policy needs groups % nodes != 0, hence at least 2 nodes
    const nodes = (hierarchical ? 1 : 2) + Math.floor(pick() * 3);
    const gpusPerNode = 1 + Math.floor(pick() * 4);
    const gpus = nodes * gpusPerNode;
    let groups: number;
    if (hierarchical) groups = nodes * (1 + Math.floor(pick() * 3));
    else {
      do groups = 2 + Math.floor(pick() * 6);
      while (groups % nodes === 0);
    }
    const groupSize = 1 + Math.floor(pick() * 5);
    const E = groups * groupSize;
    const perGpu = Math.ceil(E / gpus) + Math.floor(pick() * 3);
    cases.push({ E, R: gpus * perGpu, groups, nodes, gpus });
  }
  cases.push({ E: 256, R: 288, groups: 8, nodes: 4, gpus: 32 }); // V3-like: 256 experts + 32 redundant
  cases.push({ E: 256, R: 336, groups: 8, nodes: 3, gpus: 48 }); // global policy (8 groups on 3 nodes)

  cases.forEach((c, ci) => {
    it(`case ${ci}: E=${c.E} R=${c.R} groups=${c.groups} nodes=${c.nodes} gpus=${c.gpus}`, () => {
      const r = rng(1000 + ci);
      const layers = 3;
      const weight = Array.from({ length: layers }, (_, l) =>
        Array.from({ length: c.E }, () => (l === 2 ? Math.floor(r() * 4) : Math.floor(Math.exp(4 * r()) * 10))),
      );
      const res = rebalanceExperts(weight, c.R, c.groups, c.nodes, c.gpus);
      const hierarchical = c.groups % c.nodes === 0;
      expect(res.policy).toBe(hierarchical ? 'hierarchical' : 'global');
      checkConsistency(res, c.E, c.R);
      const perGpu = c.R / c.gpus;
      const stats = gpuLoads(weight, res.phy2log, res.logcnt, c.gpus);
      stats.loads.forEach((g, l) => {
        expect(g.length).toBe(c.gpus);
        expect(g.reduce((a, b) => a + b, 0)).toBeCloseTo(
          weight[l]!.reduce((a, b) => a + b, 0),
          6,
        );
      });
      // every GPU holds exactly R/G slots: slot s is on GPU floor(s / perGpu), all slots filled
      for (const p2l of res.phy2log) expect(p2l.length).toBe(perGpu * c.gpus);
      if (hierarchical) {
        // all replicas of all experts of a group on a single node
        const slotsPerNode = c.R / c.nodes;
        const groupSize = c.E / c.groups;
        res.phy2log.forEach((p2l) => {
          const nodeOfGroup = new Array<number>(c.groups).fill(-1);
          p2l.forEach((e, s) => {
            const g = Math.floor(e / groupSize);
            const node = Math.floor(s / slotsPerNode);
            if (nodeOfGroup[g] === -1) nodeOfGroup[g] = node;
            expect(nodeOfGroup[g]).toBe(node);
          });
          // each node hosts groups/nodes groups
          for (let n = 0; n < c.nodes; n++) expect(nodeOfGroup.filter((x) => x === n).length).toBe(c.groups / c.nodes);
        });
      }
    });
  });
});

describe('EPLB validation', () => {
  const w = [[1, 2, 3, 4, 5, 6, 7, 8]];
  it('numReplicas not a multiple of numGpus', () => {
    expect(() => rebalanceExperts(w, 10, 4, 2, 4)).toThrow(/numReplicas=10 is not a multiple of numGpus=4/);
  });
  it('numGpus not a multiple of numNodes', () => {
    expect(() => rebalanceExperts(w, 12, 4, 4, 6)).toThrow(/numGpus=6 is not a multiple of numNodes=4/);
  });
  it('fewer replicas than experts', () => {
    expect(() => rebalanceExperts(w, 4, 4, 2, 4)).toThrow(/numReplicas=4 is fewer than the 8 logical experts/);
  });
  it('experts not divisible into groups (hierarchical)', () => {
    expect(() => rebalanceExperts(w, 12, 3, 3, 3)).toThrow(/cannot be split into numGroups=3/);
  });
  it('bad loads and shapes', () => {
    expect(() => rebalanceExperts([[1, 2], [1]], 4, 1, 1, 2)).toThrow(/row 1 has 1 experts/);
    expect(() => rebalanceExperts([[1, NaN]], 4, 1, 1, 2)).toThrow(/layer 0, expert 1/);
    expect(() => rebalanceExperts([[1, -2]], 4, 1, 1, 2)).toThrow(/non-negative/);
    expect(() => rebalanceExperts([], 4, 1, 1, 2)).toThrow(/at least one layer/);
    expect(() => rebalanceExperts(w, 16, 0, 1, 2)).toThrow(/numGroups/);
  });
});
