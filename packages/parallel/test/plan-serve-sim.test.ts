// The serving step model (serveStepSeconds) and the load simulator (simulateServeLoad): each term
// adds what it says, and small loads come out as the step sums worked by hand.
import { countParameters, kvBytesPerToken, presetConfig } from '@dsv3/model';
import { describe, expect, it } from 'vitest';
import {
  expertsTouched,
  parameterSplit,
  parseCluster,
  serveStepSeconds,
  simulateServeLoad,
  type ClusterSpec,
  type EngineLimits,
  type ServeNumerics,
  type StepWork,
} from '../src/index.js';

const tiny = presetConfig('tiny-v3');
const cl: ClusterSpec = parseCluster({
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
  linkLatency: 50e-6,
  opOverhead: 20e-6,
});
const f32: ServeNumerics = { weightBytes: 4, kvBytes: 4, activationBytes: 4 };
const limits: EngineLimits = { maxBatchedTokens: 512, maxRunningSeqs: 16 };
/** The work of one step that feeds `count` tokens to each of `seqs` sequences holding `start` tokens. */
const work = (seqs: number, start: number, count: number): StepWork => ({
  tokens: seqs * count,
  keyPairs: seqs * (count * start + (count * (count + 1)) / 2),
  cacheRows: seqs * (start + count),
  logitRows: seqs,
});
const step = (w: StepWork, c = cl): number => serveStepSeconds(tiny, c, f32, [w]).total;

describe('serving step model', () => {
  it('counts the experts a batch reaches: k for one token, all of them for many', () => {
    expect(expertsTouched(16, 4, 1)).toBeCloseTo(4, 12);
    expect(expertsTouched(16, 4, 1000)).toBeCloseTo(16, 9);
    expect(expertsTouched(16, 4, 3)).toBeGreaterThan(expertsTouched(16, 4, 2));
  });

  it('one rank: fixed cost + the larger of FLOPs and memory traffic; a decode batch reads the weights once', () => {
    const one = serveStepSeconds(tiny, cl, f32, [work(1, 32, 1)]);
    expect(one.fixed).toBeCloseTo((tiny.numHiddenLayers + 1) * 40 * 20e-6, 15);
    expect(one.allToAll).toBe(0);
    expect(one.total).toBeCloseTo(one.fixed + Math.max(one.compute, one.memory), 15);
    // weights but the embedding and the unreached experts, read once: batch 1 is memory-bound
    const p = countParameters(tiny);
    const dense = (parameterSplit(tiny).replicated - p.embedding) * 4;
    expect(one.memory).toBeGreaterThan(dense / cl.hbmBandwidth);
    expect(one.memory).toBeGreaterThan(one.compute);
    // 16 sequences cost far less than 16 single steps (the weights are shared), but more than one
    const sixteen = step(work(16, 32, 1));
    expect(sixteen).toBeGreaterThan(one.total);
    expect(sixteen).toBeLessThan(4 * one.total);
    // a longer context reads more latent cache
    expect(step(work(16, 96, 1))).toBeGreaterThan(sixteen);
  });

  it('expert parallel: the slowest rank sets the pace, plus one latency per peer per all-to-all and the routed bytes', () => {
    const a = work(2, 32, 1);
    const two = serveStepSeconds(tiny, cl, f32, [a, a]);
    const noLatency = serveStepSeconds(tiny, { ...cl, linkLatency: 0 }, f32, [a, a]);
    const moe = 3;
    expect(two.allToAll - noLatency.allToAll).toBeCloseTo((2 * moe + 1) * 50e-6, 15);
    const bytes = 2 * tiny.numExpertsPerTok * 0.5 * tiny.hiddenSize * 4;
    expect(noLatency.allToAll).toBeCloseTo((2 * moe * bytes) / cl.ibBandwidth, 15);
    // lockstep: the rank with more requests sets the pace, whichever rank it is
    const local = (ws: StepWork[]): number => {
      const r = serveStepSeconds(tiny, cl, f32, ws);
      return r.total - r.allToAll;
    };
    expect(local([work(4, 32, 1), work(1, 32, 1)])).toBeCloseTo(local([work(1, 32, 1), work(4, 32, 1)]), 15);
    expect(local([work(4, 32, 1), work(1, 32, 1)])).toBeGreaterThan(local([work(1, 32, 1), work(1, 32, 1)]));
  });
});

describe('serving load simulator', () => {
  it('one request: TTFT is the prompt step, TPOT the mean decode step, throughput the tokens over the makespan', () => {
    const load = { requests: 1, concurrency: 1, inputLen: 24, outputLen: 5 };
    const p = simulateServeLoad(tiny, cl, f32, load, { kind: 'colocated', ranks: 1 }, limits);
    const prefill = step(work(1, 0, 24));
    expect(p.ttftP50).toBeCloseTo(prefill, 15);
    let decode = 0;
    for (let i = 0; i < 4; i++) decode += step(work(1, 24 + i, 1));
    expect(p.tpotP50).toBeCloseTo(decode / 4, 15);
    expect(p.outputTokensPerSecond).toBeCloseTo(5 / (prefill + decode), 9);
    expect(p.steps).toBe(5);
  });

  it('a prompt longer than the token budget is prefilled in chunks', () => {
    const load = { requests: 1, concurrency: 1, inputLen: 40, outputLen: 1 };
    const p = simulateServeLoad(
      tiny,
      cl,
      f32,
      load,
      { kind: 'colocated', ranks: 1 },
      { ...limits, maxBatchedTokens: 16 },
    );
    const ttft = step(work(1, 0, 16)) + step(work(1, 16, 16)) + step(work(1, 32, 8));
    expect(p.ttftP50).toBeCloseTo(ttft, 15);
  });

  it('closed loop: more clients batch together (higher throughput, longer TPOT than one client)', () => {
    const one = simulateServeLoad(
      tiny,
      cl,
      f32,
      { requests: 8, concurrency: 1, inputLen: 16, outputLen: 8 },
      { kind: 'colocated', ranks: 1 },
      limits,
    );
    const four = simulateServeLoad(
      tiny,
      cl,
      f32,
      { requests: 8, concurrency: 4, inputLen: 16, outputLen: 8 },
      { kind: 'colocated', ranks: 1 },
      limits,
    );
    expect(four.outputTokensPerSecond).toBeGreaterThan(2 * one.outputTokensPerSecond);
    expect(four.tpotP50).toBeGreaterThan(one.tpotP50);
    expect(one.ttft.length).toBe(8);
  });

  it('disaggregated: TTFT = prefill of all but the last prompt token + the latent hand-off + the decode step that feeds it', () => {
    const load = { requests: 1, concurrency: 1, inputLen: 24, outputLen: 3 };
    const p = simulateServeLoad(
      tiny,
      cl,
      f32,
      load,
      { kind: 'disaggregated', prefill: limits, decode: limits },
      limits,
    );
    const handOff = (kvBytesPerToken(tiny, 4) * 23) / cl.ibBandwidth + 3 * cl.linkLatency;
    const ttft = step(work(1, 0, 23)) + handOff + step(work(1, 23, 1));
    expect(p.ttftP50).toBeCloseTo(ttft, 15);
    expect(p.tpotP50).toBeCloseTo((step(work(1, 24, 1)) + step(work(1, 25, 1))) / 2, 15);
  });

  it('refuses a load that is not positive integers', () => {
    expect(() =>
      simulateServeLoad(
        tiny,
        cl,
        f32,
        { requests: 0, concurrency: 1, inputLen: 4, outputLen: 4 },
        { kind: 'colocated', ranks: 1 },
        limits,
      ),
    ).toThrow(/serving load: requests must be a positive integer, got 0/);
  });
});
