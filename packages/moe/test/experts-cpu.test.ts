// The CPU inference path of the MoE layer (experts-cpu.ts: every gate/up projection of a batch in one
// weight-product job, every down projection in another) must give exactly what the general path gives
// (grouped GEMMs, fused swiglu and combine; or each expert's module): bitwise, for f32 weights, resident
// bf16 weights, resident FP8 weights (Linear.fp8, experts run as modules), ragged token counts, 1 and 2
// threads; T up to 129 (experts of many rows: the weight GEMM reading and writing the resident work
// arrays in place); the experts run whole or in groups (a budget of one expert a group, and one of a few).
// It must also step aside where it does not apply (gradient recording, replaced forwards).
import { afterAll, describe, expect, it } from 'vitest';
import { expectSameBits } from '@dsv3/core/testing';
import {
  cpu,
  type CpuStorage,
  encodeBf16,
  isResident,
  MLP_WORK_BYTES,
  mul,
  noGrad,
  setGemmThreads,
  Tensor,
  tensor,
  type Linear,
} from '@dsv3/core';
import { quantizeWeight } from '@dsv3/fp8';
import { MoE, type Expert } from '../src/index';
import { cpuExpertsInference, expertGroups } from '../src/experts-cpu';
import { moeConfig, randValues } from './layer-helpers';

afterAll(() => setGemmThreads(2));

const cfg = moeConfig({ hiddenSize: 200, moeIntermediateSize: 70, nRoutedExperts: 16, numExpertsPerTok: 3 });

const projections = (e: Expert): Linear[] => {
  const s = e as unknown as { gateProj: Linear; upProj: Linear; downProj: Linear };
  return [s.gateProj, s.upProj, s.downProj];
};

function eachLinear(moe: MoE, fn: (l: Linear) => void): void {
  for (const e of moe.experts.items) projections(e).forEach(fn);
  projections(moe.sharedExperts!).forEach(fn);
}

/** The layer with its expert weights stored as `storage` (resident, as the model loader places them). */
function layer(storage: 'f32' | 'bf16' | 'fp8'): MoE {
  const moe = new MoE(cfg, { seed: 5 });
  if (storage === 'f32') return moe;
  eachLinear(moe, (l) => {
    const w = l.weight.value;
    const [n, k] = w.shape as [number, number];
    const values = w.dataSync() as Float32Array;
    if (storage === 'bf16') {
      const s = cpu.allocResident('bf16', n * k);
      (s.data as Uint16Array).set(encodeBf16(values));
      l.weight.value = new Tensor(cpu, s, [n, k], 'bf16');
    } else {
      const q = quantizeWeight(values, [n, k], { block: 128 });
      const s = cpu.allocResident('fp8-e4m3', n * k);
      (s.data as Uint8Array).set(q.q);
      l.fp8 = { w: new Tensor(cpu, s, [n, k], 'fp8-e4m3'), scales: q.scales };
    }
  });
  if (storage === 'fp8') moe.expertsAsModules = true; // as the loader does for FP8 experts
  return moe;
}

describe.each([1, 2])('MoE CPU inference path (%i threads)', (threads) => {
  it.each(['f32', 'bf16', 'fp8'] as const)('%s expert weights: bitwise equal to the general path', (storage) => {
    setGemmThreads(threads);
    const moe = layer(storage);
    for (const T of [1, 2, 5, 17, 70, 129]) {
      const x = tensor(randValues(T * cfg.hiddenSize, 100 + T), { shape: [1, T, cfg.hiddenSize], dtype: 'f32' });
      const general = moe.forward(x).dataSync(); // gradient recording on: the general path
      // x a kernel output (x·1, the same values) in the engine's memory from T = 21 on: the experts' gather
      // then runs there, on the engine's threads
      const fast = (inEngine: boolean, groupBytes?: number) =>
        noGrad(() => {
          const x2 = inEngine ? mul(x.reshape([T, cfg.hiddenSize]), 1) : x.reshape([T, cfg.hiddenSize]);
          if (inEngine) expect(isResident((x2.storage as CpuStorage).data)).toBe(T * cfg.hiddenSize >= 4096);
          const g = moe.gate.forward(x2);
          const out = cpuExpertsInference({
            x2,
            plan: g.plan,
            weights: g.weights,
            experts: moe.experts.items,
            shared: moe.sharedExperts,
            asModules: moe.expertsAsModules,
            groupBytes,
          });
          expect(out, 'the inference path applies').not.toBeNull();
          return out!.dataSync();
        });
      expectSameBits(fast(false), general, `${storage}, T = ${T}`);
      expectSameBits(fast(true), general, `${storage}, T = ${T}, x in the engine's memory`);
      // 4 · 14 rows · (200 + 2 · 70) bytes: a few experts a group at T = 129, one at T = 17
      for (const groupBytes of [1, 19_040])
        for (const inEngine of [false, true])
          expectSameBits(fast(inEngine, groupBytes), general, `${storage}, T = ${T}, groups of ${groupBytes} bytes`);
      expectSameBits(noGrad(() => moe.forward(x)).dataSync(), general, 'forward under noGrad');
      expect(general.every(Number.isFinite)).toBe(true);
    }
  });
});

describe('expertGroups', () => {
  const cut = (rows: number[], widths: number[], H: number, budget: number) => {
    const ends: number[] = [];
    return ends.slice(0, expertGroups(rows, widths, rows.length, H, budget, ends));
  };
  it('consecutive experts within the budget, an expert over it alone, every expert once', () => {
    // work 4 · rows · (10 + 2 · width): 120, 240, 280, 1200, 40 bytes
    const rows = [3, 6, 7, 10, 1],
      widths = [0, 0, 0, 10, 0];
    expect(cut(rows, widths, 10, 400)).toEqual([2, 3, 4, 5]);
    expect(cut(rows, widths, 10, 640)).toEqual([3, 4, 5]);
    expect(cut(rows, widths, 10, 1)).toEqual([1, 2, 3, 4, 5]);
    expect(cut(rows, widths, 10, Infinity)).toEqual([5]);
    expect(cut([], [], 10, 400), 'no experts: one empty group').toEqual([0]);
  });
  it('the default budget cuts a 512-token prefill of V3-mini (18 MiB of expert work) into five groups', () => {
    const rows = Array.from({ length: 64 }, () => 48),
      widths = rows.map(() => 256);
    // 48 rows · 4 · (1024 + 512) = 288 KiB an expert: 14 in 4 MiB
    expect(cut(rows, widths, 1024, MLP_WORK_BYTES)).toEqual([14, 28, 42, 56, 64]);
  });
});

describe('MoE CPU inference path: where it steps aside', () => {
  it('gradient recording on, or an expert whose projection forward was replaced: null (general path)', () => {
    const moe = layer('f32');
    const x2 = tensor(randValues(3 * cfg.hiddenSize, 7), { shape: [3, cfg.hiddenSize], dtype: 'f32' });
    const run = () => {
      const g = moe.gate.forward(x2);
      return cpuExpertsInference({
        x2,
        plan: g.plan,
        weights: g.weights,
        experts: moe.experts.items,
        shared: moe.sharedExperts,
        asModules: false,
      });
    };
    expect(run()).toBeNull();
    expect(noGrad(run)).not.toBeNull();
    const shared = projections(moe.sharedExperts!)[0]!;
    shared.forward = (t) => t; // e.g. a W8A8 projection installed by a loader
    expect(noGrad(run)).toBeNull();
  });
});
