// A cluster description of the machine this runs on, from measurements: the planner's "GPU" is one
// rank (a process or thread), which gets its share of the machine's GEMM FLOP/s and memory bandwidth,
// and every link is the transport the ranks use (all ranks are on this one node).
import { add, matmul, randn, setGemmThreads } from '@dsv3/core';
import { availableParallelism, totalmem } from 'node:os';
import { parseCluster, type ClusterSpec } from './cluster.js';

export interface MachineProbe {
  /** f32 GEMM FLOP/s of the whole machine (core's sgemm, every core). */
  gemmFlops: number;
  /** One large memcpy, bytes/s. */
  memcpyBandwidth: number;
  /** Seconds of one small operator (dispatch and bookkeeping; its arithmetic negligible). */
  opOverhead: number;
  /** Point-to-point bandwidth (bytes/s, one direction) and one-way latency (s) of the ranks' transport. */
  transportBandwidth: number;
  transportLatency: number;
  cores: number;
  memoryBytes: number;
}

/** f32 GEMM FLOP/s of core's sgemm at a transformer-like shape, with `threads` GEMM threads. */
export function measureGemmFlops(threads = availableParallelism(), m = 512, k = 512, n = 512): number {
  setGemmThreads(threads);
  const a = randn([m, k], { seed: 1 });
  const b = randn([k, n], { seed: 2 });
  matmul(a, b).dataSync(); // warm up
  let reps = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < 300 || reps < 5) {
    matmul(a, b).dataSync();
    reps++;
  }
  return (reps * 2 * m * k * n) / ((performance.now() - t0) / 1e3);
}

/** Bytes/s of one 64 MiB copy (the best of a few). */
export function measureMemcpy(bytes = 64 << 20): number {
  const src = new Uint8Array(bytes).fill(1);
  const dst = new Uint8Array(bytes);
  dst.set(src);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    dst.set(src);
    best = Math.min(best, performance.now() - t0);
  }
  return bytes / (best / 1e3);
}

/** Seconds per operator of core's small ops (a [1,64]·[64,64] matmul and an add, alternating): the median of several batches. */
export function measureOpOverhead(reps = 400): number {
  const x = randn([1, 64], { seed: 3 });
  const w = randn([64, 64], { seed: 4 });
  const batch = (): number => {
    const t0 = performance.now();
    let y = x;
    for (let i = 0; i < reps; i++) y = add(matmul(y, w), x);
    y.dataSync();
    return (performance.now() - t0) / 1e3 / (2 * reps);
  };
  batch(); // warm up
  const times = Array.from({ length: 7 }, batch).sort((a, b) => a - b);
  return times[times.length >> 1]!;
}

export function machineInfo(): { cores: number; memoryBytes: number } {
  return { cores: availableParallelism(), memoryBytes: totalmem() };
}

/**
 * The cluster description of this machine for a job of `ranks` ranks: each rank is a "GPU" with
 * 1/ranks of the machine's GEMM rate (measured on every core), memory bandwidth and memory;
 * NVLink and InfiniBand are both the measured transport (bandwidth and latency). Each rank dispatches
 * its own operators, so the per-operator cost is the probe's while ranks ≤ cores and grows with
 * ranks/cores past that. `efficiency` is the fraction of the GEMM rate the model's compute reaches
 * (1 = every FLOP at the sgemm rate).
 */
export function machineCluster(p: MachineProbe, ranks: number, efficiency = 1): ClusterSpec {
  if (!Number.isInteger(ranks) || ranks < 1) throw new RangeError(`ranks must be a positive integer, got ${ranks}`);
  const share = 1 / ranks;
  return parseCluster({
    name: `this machine (${p.cores} cores, ${ranks} rank${ranks > 1 ? 's' : ''})`,
    gpusPerNode: ranks,
    flops: { bf16: p.gemmFlops * share, fp8: p.gemmFlops * share },
    hbmBytes: p.memoryBytes / ranks,
    hbmBandwidth: p.memcpyBandwidth * share,
    nvlinkBandwidth: p.transportBandwidth,
    ibBandwidth: p.transportBandwidth,
    sms: 1,
    commSms: 0,
    computeEfficiency: efficiency,
    gemmPrecision: 'bf16',
    linkLatency: p.transportLatency,
    opOverhead: p.opOverhead * Math.max(1, ranks / p.cores),
  });
}
