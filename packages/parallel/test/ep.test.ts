import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { randomTensor64 } from '@dsv3/core/testing';
import { MoE, nodesPerToken } from '@dsv3/moe';
import { contiguousPlacement, crossNodeTraffic, eplbPlacement, chooseReplica, launchLocal } from '../src/index.js';
import { rankScript, runJob } from './helpers/run-job.js';

const script = fileURLToPath(new URL('./ranks/ep-moe.ts', import.meta.url));

describe('expert placement', () => {
  it('contiguous blocks, and EPLB replicas of hot experts spread over ranks', () => {
    const c = contiguousPlacement(8, 4);
    expect(c.physRank).toEqual([0, 0, 1, 1, 2, 2, 3, 3]);
    expect(() => contiguousPlacement(8, 3)).toThrow(/3 EP ranks must divide the 8 routed experts/);
    const e = eplbPlacement([9, 1, 1, 5, 1, 1, 7, 2], 4, { redundant: 4 });
    expect(e.physToLogical).toHaveLength(12);
    expect(e.replicas[0]!.length).toBeGreaterThan(1);
    const used = new Set([0, 1, 2, 3].map((t) => chooseReplica(e, 0, t, 0)));
    expect(used.size).toBe(e.replicas[0]!.length);
    expect(() => eplbPlacement([1, 2, 3, 4], 4, { redundant: 3 })).toThrow(/multiple of the 4 EP ranks/);
  });
});

/** One rank's report of test/ranks/ep-moe.ts against its bounds. */
function checkRank(o: Record<string, number>): void {
  // Exact transport; bf16 and fp8 payloads are exactly the codec's rounding.
  expect(o['roundTrip.native']).toBe(0);
  expect(o['roundTrip.bf16']).toBe(0);
  expect(o['roundTrip.fp8']).toBe(0);
  // f64: only the order of the k-way combine sum and the cross-rank gradient sum differ.
  for (const name of ['contiguous', 'eplb', 'noOverlap', 'flat', 'hierarchical']) {
    expect(o[`${name}.output`], name).toBeLessThan(1e-13);
    expect(o[`${name}.inputGrad`], name).toBeLessThan(1e-13);
    expect(o[`${name}.paramGrads`], name).toBeLessThan(1e-12);
  }
  // Two hops equal the flat path (f64: only the order of the combine sum differs) and round-trip exactly.
  expect(o['hierarchical.vsFlat']).toBeLessThan(1e-13);
  expect(o['hierarchical.roundTrip']).toBe(0);
  for (const path of ['flat', 'hierarchical']) {
    expect(o[`nodes.${path}.M1`]).toBe(1);
    expect(o[`nodes.${path}.M2`]).toBe(2);
  }
  // Node-limited routing sends less across nodes; the two-hop path sends each token to a node once.
  const cross = (path: string, M: number) => o[`crossNodeBytes.${path}.M${M}`]!;
  expect(cross('hierarchical', 1)).toBeLessThanOrEqual(cross('hierarchical', 2));
  expect(cross('hierarchical', 2)).toBeLessThan(cross('flat', 2));
  expect(cross('hierarchical', 1)).toBeLessThanOrEqual(cross('flat', 1));
  // f32 layer: FP8 dispatch is exactly the quantized input; BF16 combine adds at most bf16 rounding.
  expect(o['fp8.native']).toBeLessThan(1e-6);
  expect(o['fp8.bf16']).toBeLessThan(2 ** -8);
  expect(o['fp8.bf16']).toBeGreaterThan(0);
}

describe('expert-parallel MoE (2 nodes of 2 ranks)', () => {
  it('equals the single-process layer; dispatch∘combine is the identity; node limit holds; FP8/BF16 wire (worker threads)', {
    timeout: 300_000,
  }, async () => {
    const log = new PassThrough();
    let text = '';
    log.on('data', (d) => (text += d));
    const res = await launchLocal({ nproc: 4, script, timeoutMs: 280_000, stdout: log, stderr: log });
    for (const r of res) {
      expect(r.error, `rank ${r.rank}: ${r.error?.stack}\n${text}`).toBeUndefined();
      checkRank(r.result as Record<string, number>);
    }
  });

  it('the same as processes under dsv3-run (tcp transport)', { timeout: 300_000 }, async () => {
    const job = await runJob(['--nproc', '4', rankScript('ep-moe.ts')], { timeoutMs: 280_000 });
    expect(job.code, job.output).toBe(0);
    expect(job.results.length, job.output).toBe(4);
    for (const r of job.results) checkRank(r as Record<string, number>);
  });
});

describe('node-limited routing and cross-node traffic (V3 shape: 64 experts, top-8, 8 nodes)', () => {
  it('the gate with M=4 of 8 node groups never reaches more than 4 nodes, and inter-node dispatch bytes drop', async () => {
    const H = 7168; // V3's hidden size: one FP8 dispatch row is H bytes + H/128 f32 scales
    const rowBytes = H + 4 * (H / 128);
    const T = 512;
    const x = randomTensor64([T, 32], 9).cast('f32');
    for (const M of [1, 2, 4]) {
      const moe = new MoE(
        {
          hidden_size: 32,
          n_routed_experts: 64,
          num_experts_per_tok: 8,
          n_group: 8,
          topk_group: M,
          norm_topk_prob: true,
          routed_scaling_factor: 2.5,
          scoring_func: 'sigmoid',
          topk_method: 'noaux_tc',
          n_shared_experts: 1,
          moe_intermediate_size: 16,
        },
        { seed: 2 },
      );
      const nodes = nodesPerToken(moe.gate.forward(x).indices.dataSync() as Int32Array, 8, 64, 8);
      expect(Math.max(...nodes), `M=${M}`).toBeLessThanOrEqual(M);
    }
    const limited = crossNodeTraffic({ experts: 64, topK: 8, nodes: 8, maxNodes: 4 });
    const free = crossNodeTraffic({ experts: 64, topK: 8, nodes: 8, maxNodes: null });
    expect(limited.nodesPerToken).toBeLessThanOrEqual(4);
    expect(limited.remoteCopies * rowBytes).toBeLessThan(free.remoteCopies * rowBytes);
    console.log(
      `inter-node dispatch bytes per token (FP8, H=${H}): M=4 ${(limited.remoteCopies * rowBytes).toFixed(0)} vs unrestricted ${(free.remoteCopies * rowBytes).toFixed(0)} (${limited.nodesPerToken.toFixed(2)} vs ${free.nodesPerToken.toFixed(2)} nodes per token)`,
    );
  });
});
