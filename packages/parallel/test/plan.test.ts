import { presetConfig } from '@dsv3/model';
import { describe, expect, it } from 'vitest';
import {
  bubbleTable,
  crossNodeTraffic,
  H800,
  layoutProblems,
  nearestLayouts,
  parseCluster,
  parseParallel,
  planServing,
  planTraining,
  parameterSplit,
  PlanError,
  reproduceV3,
  V3_DECODE,
  V3_PREFILL,
  V3_TRAIN_LAYOUT,
  V3_TRAIN_WORKLOAD,
  type TrainLayout,
} from '../src/index.js';

const v3 = presetConfig('deepseek-v3');
const tiny = presetConfig('tiny-v3');

describe('planner: V3 reproduction', () => {
  const r = reproduceV3(v3);

  it("V3's parameters (671B / 37B) and latent KV bytes per token come from @dsv3/model's accounting", () => {
    expect(r.parameters.total / 1e9).toBeCloseTo(671.03, 2);
    expect(r.parameters.activated / 1e9).toBeGreaterThan(37);
    expect(r.parameters.activated / 1e9).toBeLessThan(38);
    expect(r.kvBytesPerToken).toBe(70272);
  });

  it('the simulated bubble table equals the reference formulas for PP 4, 8, 16 and two chunk counts', () => {
    expect(r.bubbles.length).toBe(3 * 2 * 4);
    for (const row of r.bubbles)
      expect(row.simulated, `${row.kind} PP ${row.pp} chunks ${row.chunks}`).toBeCloseTo(row.formula, 9);
    for (const row of r.bubbles.filter((x) => x.kind === 'dualpipe')) {
      expect(row.parameterCopies).toBe(2);
      expect(row.peakActivations).toBe(row.pp + 1);
    }
  });

  it('cross-node EP without overlap is ≈ 1:1 compute to communication on H800 (GEMMs at half the FP8 peak)', () => {
    expect(r.computeToComm.ratio).toBeGreaterThan(0.75);
    expect(r.computeToComm.ratio).toBeLessThan(1.33);
  });

  it('4-node-limited routing halves cross-node copies against one copy per remote expert', () => {
    expect(r.routing.nodeLimited.nodesPerToken).toBeLessThanOrEqual(4);
    expect(r.routing.unrestricted.nodesPerToken).toBeGreaterThan(4.5);
    expect(r.routing.ratioVsPerExpertCopies).toBeGreaterThan(0.45);
    expect(r.routing.ratioVsPerExpertCopies).toBeLessThan(0.55);
  });

  it('180K H800 GPU-hours per trillion tokens at a stated efficiency, MFU ≈ 39% of BF16 peak', () => {
    expect(r.gpuHours.plan.gpuHoursPerTrillionTokens).toBeCloseTo(180e3, -2);
    expect(r.gpuHours.mfuBf16).toBeGreaterThan(0.3);
    expect(r.gpuHours.mfuBf16).toBeLessThan(0.5);
    expect(r.training.memory.fits).toBe(true);
    expect(r.training.step.allToAllHidden).toBeGreaterThan(0.5 * r.training.step.allToAll);
  });

  it("V3's serving units: 9 experts per prefill GPU, 1 per decode GPU; EPLB flattens per-GPU load", () => {
    expect(r.prefill.slotsPerGpu).toBe(9);
    expect(r.decode.slotsPerGpu).toBe(1);
    for (const p of [r.prefill, r.decode]) {
      const flat = p.withRedundancy.maxTokensPerGpu / p.withRedundancy.meanTokensPerGpu;
      const bare = p.withoutRedundancy.maxTokensPerGpu / p.withoutRedundancy.meanTokensPerGpu;
      expect(flat).toBeLessThan(bare);
    }
    // Decode: the shared expert (every token) needs replicas; per-expert load stays within a few hundred tokens.
    expect(r.decode.withoutRedundancy.maxTokensPerExpert).toBe(V3_DECODE.tokensPerGroup * 80);
    expect(r.decode.withRedundancy.maxTokensPerExpert).toBeLessThan(400);
  });
});

describe('planner: layouts', () => {
  const w = { seqLen: 128, globalBatch: 16, microBatch: 1, maxNodesPerToken: null };
  const base: TrainLayout = { dp: 2, pp: 2, ep: 2, tp: 1, schedule: 'dualpipe', zero1: true };

  it('explains an impossible layout and names the nearest that works', () => {
    expect(layoutProblems(tiny, { ...base, pp: 3 }, w)).toEqual([
      expect.stringMatching(/dualpipe: needs an even number of ranks/),
    ]);
    expect(layoutProblems(tiny, { ...base, ep: 3 }, w).join()).toMatch(
      /ep=3 must divide the 16 routed experts.*global batch 16 is not a multiple of dp·ep·micro-batch = 6/,
    );
    expect(layoutProblems(tiny, { ...base, pp: 8, schedule: '1f1b' }, w).join()).toMatch(
      /needs 8 stages but the model has 4 layers/,
    );
    let err: PlanError | null = null;
    try {
      planTraining(tiny, H800, { ...base, dp: 1, pp: 6, ep: 1 }, { ...w, globalBatch: 12 });
    } catch (e) {
      err = e as PlanError;
    }
    expect(err).toBeInstanceOf(PlanError);
    expect(err!.message).toMatch(/needs 6 stages but the model has 4 layers/);
    expect(err!.suggestion).not.toBeNull();
    expect(layoutProblems(tiny, err!.suggestion!, { ...w, globalBatch: 12 })).toEqual([]);
  });

  it('a model that does not fit gets the memory breakdown, and a layout of the same GPUs that fits', () => {
    const small = { ...H800, hbmBytes: 40e9 };
    expect(() => planTraining(v3, small, V3_TRAIN_LAYOUT, V3_TRAIN_WORKLOAD)).toThrow(
      /needs .* GB per GPU \(weights .*activations .* for 17 chunks in flight\) but a GPU has 40\.0 GB/,
    );
    const near = nearestLayouts(v3, H800, { ...V3_TRAIN_LAYOUT, pp: 4, dp: 8 }, V3_TRAIN_WORKLOAD, 1);
    expect(near.length).toBe(1);
    expect(planTraining(v3, H800, near[0]!, V3_TRAIN_WORKLOAD).memory.fits).toBe(true);
    expect(() =>
      planTraining(v3, H800, { ...V3_TRAIN_LAYOUT, dp: 1, pp: 2, ep: 4 }, { ...V3_TRAIN_WORKLOAD, globalBatch: 64 }),
    ).toThrow(/No layout of 8 GPUs works/);
  });

  it('ZeRO-1 shards the optimizer; DualPipe doubles parameters; overlap hides all-to-all only for DualPipe', () => {
    const on = planTraining(v3, H800, V3_TRAIN_LAYOUT, V3_TRAIN_WORKLOAD);
    const off = planTraining(v3, H800, { ...V3_TRAIN_LAYOUT, zero1: false }, V3_TRAIN_WORKLOAD, {
      allowOverflow: true,
    });
    // DualPipe: two stages of 1/16 each; replicated parameters shard over dp·ep = 128, experts over dp = 2.
    const { replicated, routed } = parameterSplit(v3);
    const rep = (2 * replicated) / 16;
    const exp = (2 * routed) / 16 / 64;
    expect(on.memory.optimizer / 8).toBeCloseTo(rep / 128 + exp / 2, -3);
    expect(off.memory.optimizer / 8).toBeCloseTo(rep + exp, -3);
    const one = planTraining(v3, H800, { ...V3_TRAIN_LAYOUT, schedule: '1f1b' }, V3_TRAIN_WORKLOAD);
    expect(on.memory.parameters).toBeCloseTo(2 * one.memory.parameters, 0);
    expect(one.step.allToAllHidden).toBeCloseTo(0, 6);
    expect(on.step.total).toBeLessThan(one.step.total);
  });

  it('parses --parallel and rejects bad specs and clusters clearly', () => {
    expect(parseParallel('dp=2,pp=2,ep=2')).toEqual({ dp: 2, pp: 2, ep: 2, tp: 1 });
    expect(() => parseParallel('dp=2,xp=4')).toThrow(/cannot read 'xp=4'/);
    expect(() => parseCluster({ ...H800, commSms: 200 })).toThrow(/commSms \(200\) must be below sms/);
    expect(() => parseCluster({ gpusPerNode: 0 })).toThrow(/invalid cluster description: gpusPerNode/);
    expect(() => planServing(v3, H800, { ...V3_PREFILL, redundantSlots: 30 })).toThrow(
      /256 experts \+ 30 redundant slots = 286 do not split evenly over 32 GPUs \(nearest: 32 redundant slots\)/,
    );
  });

  it('node-limited routing never reaches more than M nodes', () => {
    for (const M of [1, 2, 3, 4]) {
      const t = crossNodeTraffic({ experts: 64, topK: 4, nodes: 8, maxNodes: M, tokens: 512 });
      expect(t.nodesPerToken).toBeLessThanOrEqual(M);
    }
  });

  it('bubble table rows also hold for odd chunk multiples', () => {
    for (const row of bubbleTable([6], [3])) expect(row.simulated).toBeCloseTo(row.formula, 9);
  });
});
