// The planner on this machine (plan/probe.ts, plan/validate.ts): the cluster description built from
// measurements, dsv3-train's layouts in planner terms, calibration, and bad inputs explained with the
// nearest layout that works.
import { presetConfig } from '@dsv3/model';
import { describe, expect, it } from 'vitest';
import {
  PlanError,
  calibrateEfficiency,
  layoutProblems,
  machineCluster,
  measureGemmFlops,
  measureMemcpy,
  measureOpOverhead,
  plannerLayout,
  plannerWorkload,
  predictionError,
  predictTrainerStep,
  trainerRanks,
  worldSize,
  type MachineProbe,
  type TrainerLayout,
} from '../src/index.js';

const model = presetConfig('tiny-v3');
// A fixed description (measured values would make the expectations depend on the machine's load).
const probe: MachineProbe = {
  gemmFlops: 80e9,
  memcpyBandwidth: 20e9,
  opOverhead: 20e-6,
  transportBandwidth: 2e9,
  transportLatency: 30e-6,
  cores: 2,
  memoryBytes: 24e9,
};
const batch = { sequences: 8, microBatch: 1, seqLen: 64 };
const layout = (l: Partial<TrainerLayout>): TrainerLayout => ({
  dp: 1,
  pp: 1,
  ep: 1,
  schedule: '1f1b',
  zero1: false,
  ...l,
});

describe('planner validation on this machine', () => {
  it('measures GEMM FLOP/s, memcpy bandwidth and the cost of a small operator', () => {
    expect(measureGemmFlops(1, 64, 64, 64)).toBeGreaterThan(1e6);
    expect(measureMemcpy(1 << 20)).toBeGreaterThan(1e6);
    const op = measureOpOverhead(20);
    expect(op).toBeGreaterThan(0);
    expect(op).toBeLessThan(1);
  });

  it('describes the machine as one node whose ranks share its FLOP/s, bandwidth and memory', () => {
    const c = machineCluster(probe, 4, 0.25);
    expect(c.gpusPerNode).toBe(4);
    expect(c.flops.bf16).toBe(20e9);
    expect(c.hbmBandwidth).toBe(5e9);
    expect(c.hbmBytes).toBe(6e9);
    expect(c.nvlinkBandwidth).toBe(2e9);
    expect(c.ibBandwidth).toBe(2e9);
    expect(c.computeEfficiency).toBe(0.25);
    expect(() => machineCluster(probe, 0)).toThrow(/ranks must be a positive integer, got 0/);
  });

  it("maps dsv3-train's dp·pp·ep ranks onto the planner's layout (the same meaning: ep its own factor)", () => {
    for (const t of [
      layout({ dp: 2 }),
      layout({ ep: 2 }),
      layout({ pp: 2, schedule: 'dualpipe' }),
      layout({ dp: 2, ep: 2 }),
    ]) {
      const l = plannerLayout(t);
      expect(worldSize(l)).toBe(trainerRanks(t));
      expect(layoutProblems(model, l, plannerWorkload(batch))).toEqual([]);
    }
    expect(plannerLayout(layout({ dp: 2, ep: 2 }))).toMatchObject({ dp: 2, ep: 2, pp: 1, tp: 1 });
  });

  it('predicts: data parallelism halves the work and the FLOP/s of each rank (not its dispatch), adds the gradient sync', () => {
    const one = predictTrainerStep(model, probe, layout({}), batch);
    const dp2 = predictTrainerStep(model, probe, layout({ dp: 2 }), batch);
    // the GEMM part is the same (half the tokens at half the rate); each rank launches half the operators on its own core
    expect(dp2.step.compute - dp2.step.fixed).toBeCloseTo(one.step.compute - one.step.fixed, 12);
    expect(dp2.step.fixed).toBeCloseTo(one.step.fixed / 2, 12);
    expect(one.step.fixed).toBeGreaterThan(0);
    // past one rank per core, ranks share the cores' dispatch too
    const four = predictTrainerStep(model, probe, layout({ dp: 2, ep: 2 }), batch);
    expect(four.step.fixed).toBeCloseTo(one.step.fixed / 2, 12);
    expect(dp2.step.dataParallel).toBeGreaterThan(0);
    expect(one.step.dataParallel).toBe(0);
    const ep2 = predictTrainerStep(model, probe, layout({ ep: 2 }), batch);
    expect(ep2.step.allToAll).toBeGreaterThan(0);
    const pp1f1b = predictTrainerStep(model, probe, layout({ pp: 2, schedule: '1f1b' }), batch);
    const ppDual = predictTrainerStep(model, probe, layout({ pp: 2, schedule: 'dualpipe' }), batch);
    expect(pp1f1b.step.bubble).toBeGreaterThan(0);
    expect(ppDual.step.bubble).toBeLessThan(pp1f1b.step.bubble);
  });

  it('calibrates the one free parameter on one rank: the calibrated one-rank prediction is the measurement', () => {
    const measured = 3.5;
    const eff = calibrateEfficiency(model, probe, batch, measured);
    expect(eff).toBeGreaterThan(0);
    expect(eff).toBeLessThanOrEqual(1);
    expect(predictTrainerStep(model, probe, layout({}), batch, eff).step.total).toBeCloseTo(measured, 9);
    expect(predictionError(1.2, 1)).toBeCloseTo(0.2, 12);
    expect(() => calibrateEfficiency(model, probe, batch, 0)).toThrow(/must be positive seconds, got 0/);
  });

  it('an impossible layout is explained, with the nearest layout that works on the same ranks', () => {
    // DualPipe on 2 ranks needs an even number of micro-batches, at least 4: 3 sequences give 3.
    let err: unknown;
    try {
      predictTrainerStep(model, probe, layout({ pp: 2, schedule: 'dualpipe' }), { ...batch, sequences: 3 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PlanError);
    expect((err as PlanError).message).toMatch(/^impossible training layout: dualpipe: .*Nearest layout that works: /);
    const near = (err as PlanError).suggestion!;
    expect(worldSize(near)).toBe(2);
    expect(() => predictTrainerStep(model, probe, layout({ ep: 3 }), batch)).toThrow(
      /ep=3 must divide the 16 routed experts/,
    );
  });

  it('a model that does not fit says what it needs and that no layout of those ranks works', () => {
    const small = { ...probe, memoryBytes: 4e6 };
    expect(() => predictTrainerStep(model, small, layout({ dp: 2 }), batch)).toThrow(
      /needs .* per GPU \(weights .*\) but a GPU has 0\.0 GB\. No layout of 2 GPUs works for this model and workload/,
    );
  });
});
