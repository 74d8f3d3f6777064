// Cross-node all-to-all traffic of expert parallelism, measured by routing seeded random tokens
// through @dsv3/moe's gate (unrestricted top-k) and node-limited gate (at most M nodes per token).
import { Rng } from '@dsv3/core';
import { gateRoute, nodeLimitedRoute, nodesPerToken } from '@dsv3/moe';

export interface TrafficOptions {
  experts: number;
  /** K: experts per token. */
  topK: number;
  /** Nodes the experts are spread over (experts contiguous per node). */
  nodes: number;
  /** M: most nodes a token may reach (node-limited routing); null for unrestricted top-k. */
  maxNodes: number | null;
  tokens?: number;
  seed?: number;
}

export interface TrafficReport {
  /** Mean distinct nodes a token's experts live on. */
  nodesPerToken: number;
  /** Mean copies of a token crossing the network when every expert gets its own copy (no dedup per node). */
  naiveRemoteCopies: number;
  /**
   * Mean copies crossing the network on the hierarchical path: one per distinct remote node (then
   * NVLink to each expert inside it). The source node is one of the token's nodes with probability nodes_t/N.
   */
  remoteCopies: number;
}

export function crossNodeTraffic(o: TrafficOptions): TrafficReport {
  const T = o.tokens ?? 4096;
  const logits = new Rng(o.seed ?? 7).fillNormal(new Float32Array(T * o.experts), 0, 1) as Float32Array;
  const route =
    o.maxNodes === null
      ? gateRoute(logits, {
          nRoutedExperts: o.experts,
          numExpertsPerTok: o.topK,
          nGroup: 1,
          topkGroup: 1,
          normTopkProb: true,
          routedScalingFactor: 1,
          scoringFunc: 'sigmoid',
        })
      : nodeLimitedRoute(logits, {
          nRoutedExperts: o.experts,
          numExpertsPerTok: o.topK,
          nNodes: o.nodes,
          maxNodesPerToken: o.maxNodes,
          topPerNode: Math.max(1, Math.floor(o.topK / o.maxNodes)),
          normTopkProb: true,
          routedScalingFactor: 1,
          scoringFunc: 'sigmoid',
        });
  const perToken = nodesPerToken(route.indices, o.topK, o.experts, o.nodes);
  const perNode = o.experts / o.nodes;
  let nodes = 0;
  let naive = 0;
  let remote = 0;
  for (let t = 0; t < T; t++) {
    const n = perToken[t]!;
    nodes += n;
    // Average over the token's source node, uniform over all nodes.
    remote += n - n / o.nodes;
    const counts = new Map<number, number>();
    for (let k = 0; k < o.topK; k++) {
      const node = Math.floor(route.indices[t * o.topK + k]! / perNode);
      counts.set(node, (counts.get(node) ?? 0) + 1);
    }
    for (const c of counts.values()) naive += c * (1 - 1 / o.nodes);
  }
  return { nodesPerToken: nodes / T, naiveRemoteCopies: naive / T, remoteCopies: remote / T };
}
