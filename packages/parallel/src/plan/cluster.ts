// Cluster descriptions: what the planner knows about the machines. Bandwidths are per GPU, one
// direction, in bytes/s; FLOP/s are dense peaks.
import { z } from 'zod';

export const clusterSchema = z.object({
  name: z.string().default('custom'),
  gpusPerNode: z.number().int().positive(),
  /** Dense peak FLOP/s per GPU by precision. */
  flops: z.object({ bf16: z.number().positive(), fp8: z.number().positive() }),
  hbmBytes: z.number().positive(),
  hbmBandwidth: z.number().positive(),
  /** Intra-node bandwidth per GPU. */
  nvlinkBandwidth: z.number().positive(),
  /** Inter-node bandwidth per GPU (one NIC per GPU). */
  ibBandwidth: z.number().positive(),
  sms: z.number().int().positive(),
  /** SMs kept for communication while computing (V3: 20 of 132). */
  commSms: z.number().int().nonnegative(),
  /** Fraction of peak the GEMM-bound training/prefill kernels reach (an assumption, stated with each result). */
  computeEfficiency: z.number().positive().max(1).default(0.5),
  /** Precision of the big GEMMs. */
  gemmPrecision: z.enum(['bf16', 'fp8']).default('fp8'),
  /** One-way latency of one message on either link (s); every all-to-all, send and collective step pays it. */
  linkLatency: z.number().nonnegative().default(0),
  /** Fixed cost of launching one operator (a kernel launch, a host dispatch), whatever its size (s). */
  opOverhead: z.number().nonnegative().default(0),
  /**
   * Operators one decoder layer's forward launches (its backward counted as twice that); with
   * `opOverhead` the per-step fixed cost. dsv3's own forward: ~40 (core's op profiler, tiny-v3 decode).
   */
  opsPerLayer: z.number().positive().default(40),
});

export type ClusterSpec = z.output<typeof clusterSchema>;
export type ClusterInput = z.input<typeof clusterSchema>;

/** H800 as the V3 report describes it: NVLink 160 GB/s, IB 50 GB/s (400 Gb/s NIC per GPU), 20 of 132 SMs for communication. */
export const H800: ClusterSpec = clusterSchema.parse({
  name: 'h800',
  gpusPerNode: 8,
  flops: { bf16: 989.5e12, fp8: 1979e12 },
  hbmBytes: 80e9,
  hbmBandwidth: 3.35e12,
  nvlinkBandwidth: 160e9,
  ibBandwidth: 50e9,
  sms: 132,
  commSms: 20,
  computeEfficiency: 0.5,
  gemmPrecision: 'fp8',
});

export const CLUSTER_PRESETS: Record<string, ClusterSpec> = { h800: H800 };

export function parseCluster(input: unknown): ClusterSpec {
  const r = clusterSchema.safeParse(input);
  if (!r.success)
    throw new Error(
      `invalid cluster description: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`,
    );
  if (r.data.commSms >= r.data.sms)
    throw new Error(`invalid cluster description: commSms (${r.data.commSms}) must be below sms (${r.data.sms})`);
  return r.data;
}

/** FLOP/s the model's GEMMs get while `commSms` SMs run communication. */
export function effectiveFlops(c: ClusterSpec, overlapComm: boolean): number {
  const sms = overlapComm ? (c.sms - c.commSms) / c.sms : 1;
  return c.flops[c.gemmPrecision] * c.computeEfficiency * sms;
}
