// The planner's terms beyond FLOPs and bandwidth: per-message latency, per-operator fixed cost, the
// optimizer update, MTP modules and uneven pipeline stages. Each is zero by default (the V3 figures
// stay what they were) and adds exactly what it says when set.
import { flopsPerToken, presetConfig } from '@dsv3/model';
import { describe, expect, it } from 'vitest';
import {
  H800,
  parseCluster,
  planTraining,
  trainerStageUnits,
  unitFlopsPerToken,
  type ClusterSpec,
  type TrainLayout,
  type TrainWorkload,
} from '../src/index.js';

const tiny = presetConfig('tiny-v3');
const v3 = presetConfig('deepseek-v3');
const cpu: ClusterSpec = parseCluster({
  gpusPerNode: 2,
  flops: { bf16: 10e9, fp8: 10e9 },
  hbmBytes: 8e9,
  hbmBandwidth: 5e9,
  nvlinkBandwidth: 1e9,
  ibBandwidth: 1e9,
  sms: 1,
  commSms: 0,
  computeEfficiency: 0.5,
  gemmPrecision: 'bf16',
});
const w: TrainWorkload = { seqLen: 64, globalBatch: 8, microBatch: 1, maxNodesPerToken: null };
const l = (p: Partial<TrainLayout>): TrainLayout => ({
  dp: 1,
  pp: 1,
  ep: 1,
  tp: 1,
  schedule: '1f1b',
  zero1: false,
  ...p,
});

describe('planner terms', () => {
  it('splits forward FLOPs into units that add up to flopsPerToken; MTP modules land on the head unit', () => {
    for (const c of [tiny, v3]) {
      const u = unitFlopsPerToken(c, 4096);
      expect(u.length).toBe(c.numHiddenLayers + 2);
      expect(u[0]).toBe(0);
      const sum = u.reduce((a, b) => a + b, 0);
      expect(Math.abs(sum / flopsPerToken(c, { context: 4096 }) - 1)).toBeLessThan(1e-12);
      const withMtp = unitFlopsPerToken(c, 4096, 1);
      expect(withMtp.slice(0, -1)).toEqual(u.slice(0, -1));
      expect(withMtp.at(-1)!).toBeGreaterThan(u.at(-1)! + u.at(-2)!);
    }
  });

  it('defaults add nothing: no latency, no operator cost', () => {
    expect(H800.linkLatency).toBe(0);
    expect(H800.opOverhead).toBe(0);
    const p = planTraining(tiny, cpu, l({ ep: 2 }), w);
    expect(p.step.fixed).toBe(0);
  });

  it('a per-operator cost adds opsPerLayer · (layers + head + MTP) per forward, twice that per backward, per micro-batch', () => {
    const base = planTraining(tiny, cpu, l({}), { ...w, mtpDepth: 1 });
    const slow = planTraining(tiny, { ...cpu, opOverhead: 1e-4 }, l({}), { ...w, mtpDepth: 1 });
    const perForward = (tiny.numHiddenLayers + 1 + 1) * cpu.opsPerLayer * 1e-4;
    expect(slow.step.fixed).toBeCloseTo(8 * 3 * perForward, 12);
    expect(slow.step.total - base.step.total).toBeCloseTo(8 * 3 * perForward, 12);
  });

  it('latency: each MoE layer pays two messages forward and two backward per micro-batch; collectives pay their ring steps', () => {
    const lat = 1e-3;
    const a = planTraining(tiny, cpu, l({ ep: 2 }), w);
    const b = planTraining(tiny, { ...cpu, linkLatency: lat }, l({ ep: 2 }), w);
    const moe = 3; // tiny-v3: 4 layers, the first dense
    const chunks = 4; // 8 sequences over dp·ep = 2 ranks
    expect(b.step.allToAll - a.step.allToAll).toBeCloseTo(chunks * moe * 4 * lat, 12);
    // gradient all-reduce over 2 ranks (2 ring steps) + loss, norm and 3 expert-load all-reduces over the world
    expect(b.step.dataParallel - a.step.dataParallel).toBeCloseTo(2 * lat + (2 + moe) * 2 * lat, 12);
    const pp = planTraining(tiny, { ...cpu, linkLatency: lat }, l({ pp: 2 }), w);
    expect(pp.chunk.p2p - planTraining(tiny, cpu, l({ pp: 2 }), w).chunk.p2p).toBeCloseTo(lat, 15);
  });

  it('the optimizer update moves 22 bytes per parameter it owns at the memory bandwidth; ZeRO-1 shards it', () => {
    const p = planTraining(tiny, cpu, l({ dp: 2 }), w);
    expect(p.step.optimizer).toBeCloseTo((22 * p.memory.parameters) / cpu.hbmBandwidth, 12);
    const z = planTraining(tiny, cpu, l({ dp: 2, zero1: true }), w);
    expect(z.step.optimizer).toBeCloseTo(p.step.optimizer / 2, 12);
  });

  it("uneven stages: dsv3-train's split of tiny-v3 over 2 stages is slower than balanced stages, and the costlier stage sets the pace", () => {
    const split = trainerStageUnits(tiny.numHiddenLayers, 2);
    expect(split).toEqual([
      [0, 3],
      [3, 6],
    ]);
    const balanced = planTraining(tiny, cpu, l({ pp: 2 }), w);
    const actual = planTraining(tiny, cpu, l({ pp: 2 }), w, { stageUnits: split });
    expect(actual.stageChunks.length).toBe(2);
    expect(actual.stageChunks[0]!.F).not.toBeCloseTo(actual.stageChunks[1]!.F, 6);
    expect(actual.step.total).toBeGreaterThan(balanced.step.total);
    // a single stage holding everything is the unsplit model
    const one = planTraining(tiny, cpu, l({}), w, { stageUnits: trainerStageUnits(tiny.numHiddenLayers, 1) });
    expect(one.step.total).toBeCloseTo(planTraining(tiny, cpu, l({}), w).step.total, 12);
    expect(() =>
      planTraining(tiny, cpu, l({ pp: 2 }), w, {
        stageUnits: [
          [0, 2],
          [3, 6],
        ],
      }),
    ).toThrow(/not contiguous/);
    expect(() => planTraining(tiny, cpu, l({ pp: 2 }), w, { stageUnits: [[0, 6]] })).toThrow(
      /the stage split has 1 stages, the schedule 2/,
    );
  });
});
