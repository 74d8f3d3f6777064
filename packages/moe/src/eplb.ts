// Expert-parallel load balancer (EPLB): DeepSeek's redundant-expert placement.
//
// Given per-layer expert loads, choose how many replicas (physical experts) each logical expert gets and
// where every replica lives, so that GPU loads are balanced:
//   hierarchical policy (numGroups % numNodes == 0):
//     1. pack the expert groups onto nodes (balanced packing of group loads, groups/node each);
//     2. inside each node, replicate its experts up to numReplicas/numNodes physical experts, each extra
//        replica going to the expert with the largest load/count (ties: lowest id);
//     3. pack the node's physical experts onto its GPUs (balanced packing of load/count);
//     4. map everything back to logical ids.
//   global policy otherwise: the same with one group and one node.
// Balanced packing: items by descending weight (ties: lowest index first), each to the lightest pack that
// is not full (ties: lowest pack id); when every pack takes exactly one item, item i goes to pack i.
// Arithmetic is float32, as DeepSeek's reference (`weight.float()`), so ties resolve the same way.

const f32 = Math.fround;

export interface PackingResult {
  /** [n] pack of each item. */
  packIndex: Int32Array;
  /** [n] position of the item inside its pack (order of insertion). */
  rankInPack: Int32Array;
}

/** Packs n weighted items into `numPacks` packs of exactly n/numPacks items each, greedily balanced. */
export function balancedPacking(weight: ArrayLike<number>, numPacks: number): PackingResult {
  const n = weight.length;
  if (!Number.isInteger(numPacks) || numPacks < 1)
    throw new Error(`numPacks must be a positive integer, got ${numPacks}`);
  if (n % numPacks !== 0) throw new Error(`${n} items cannot be split evenly into ${numPacks} packs`);
  const perPack = n / numPacks;
  const packIndex = new Int32Array(n);
  const rankInPack = new Int32Array(n);
  if (perPack === 1) {
    for (let i = 0; i < n; i++) packIndex[i] = i;
    return { packIndex, rankInPack };
  }
  const w = Float32Array.from(weight);
  const order = Array.from({ length: n }, (_, i) => i);
  // Array.prototype.sort is stable: equal weights keep ascending index order
  order.sort((a, b) => (w[b] as number) - (w[a] as number));
  const packWeight = new Float32Array(numPacks);
  const packItems = new Int32Array(numPacks);
  for (const item of order) {
    let best = -1;
    for (let p = 0; p < numPacks; p++) {
      if ((packItems[p] as number) >= perPack) continue;
      if (best < 0 || (packWeight[p] as number) < (packWeight[best] as number)) best = p;
    }
    packIndex[item] = best;
    rankInPack[item] = packItems[best] as number;
    packWeight[best] = f32((packWeight[best] as number) + (w[item] as number));
    packItems[best]! += 1;
  }
  return { packIndex, rankInPack };
}

export interface ReplicationResult {
  /** [numPhy] logical expert of each physical expert (the first numLog are the experts themselves). */
  phy2log: Int32Array;
  /** [numPhy] replica rank of each physical expert (0 for the original). */
  rank: Int32Array;
  /** [numLog] replicas per logical expert. */
  logcnt: Int32Array;
}

/**
 * Replicates numLog experts into numPhy physical experts: every expert once, then each extra replica to
 * the expert with the largest load per replica (float32 division; ties: lowest id).
 */
export function replicateExperts(weight: ArrayLike<number>, numPhy: number): ReplicationResult {
  const numLog = weight.length;
  if (!Number.isInteger(numPhy) || numPhy < numLog) {
    throw new Error(`cannot replicate ${numLog} experts into ${numPhy} physical experts`);
  }
  const w = Float32Array.from(weight);
  const phy2log = new Int32Array(numPhy);
  const rank = new Int32Array(numPhy);
  const logcnt = new Int32Array(numLog).fill(1);
  for (let i = 0; i < numLog; i++) phy2log[i] = i;
  for (let i = numLog; i < numPhy; i++) {
    let best = 0;
    let bestV = -Infinity;
    for (let e = 0; e < numLog; e++) {
      const v = f32((w[e] as number) / (logcnt[e] as number));
      if (v > bestV) {
        bestV = v;
        best = e;
      }
    }
    phy2log[i] = best;
    rank[i] = logcnt[best] as number;
    logcnt[best]! += 1;
  }
  return { phy2log, rank, logcnt };
}

/** One layer of the hierarchical policy; returns physical-slot-ordered phy2log/phyrank and logcnt. */
function rebalanceLayerHierarchical(
  weightRow: Float32Array,
  numPhy: number,
  numGroups: number,
  numNodes: number,
  numGpus: number,
): { phy2log: Int32Array; phyrank: Int32Array; logcnt: Int32Array } {
  const E = weightRow.length;
  const groupSize = E / numGroups;
  const groupsPerNode = numGroups / numNodes;
  const phyPerGpu = numPhy / numGpus;
  const logPerNode = E / numNodes;
  const phyPerNode = numPhy / numNodes;
  const gpusPerNode = numGpus / numNodes;

  // 1. groups onto nodes
  const groupLoad = new Float32Array(numGroups);
  for (let g = 0; g < numGroups; g++) {
    let s = 0;
    for (let j = 0; j < groupSize; j++) s = f32(s + (weightRow[g * groupSize + j] as number));
    groupLoad[g] = s;
  }
  const gp = balancedPacking(groupLoad, numNodes);
  // log -> "node-major logical" id (mlog): node, slot of the group on the node, expert within group
  const log2mlog = new Int32Array(E);
  const mlog2log = new Int32Array(E);
  for (let g = 0; g < numGroups; g++) {
    const slot = (gp.packIndex[g] as number) * groupsPerNode + (gp.rankInPack[g] as number);
    for (let j = 0; j < groupSize; j++) {
      const m = slot * groupSize + j;
      log2mlog[g * groupSize + j] = m;
      mlog2log[m] = g * groupSize + j;
    }
  }

  const phy2log = new Int32Array(numPhy);
  const phyrank = new Int32Array(numPhy);
  const mlogcnt = new Int32Array(E);
  const nodeLoad = new Float32Array(logPerNode);
  for (let node = 0; node < numNodes; node++) {
    // 2. replicate within the node
    for (let m = 0; m < logPerNode; m++) nodeLoad[m] = weightRow[mlog2log[node * logPerNode + m] as number] as number;
    const rep = replicateExperts(nodeLoad, phyPerNode);
    for (let m = 0; m < logPerNode; m++) mlogcnt[node * logPerNode + m] = rep.logcnt[m] as number;
    // 3. physical experts onto the node's GPUs
    const phyLoad = new Float32Array(phyPerNode);
    for (let p = 0; p < phyPerNode; p++) {
      const m = rep.phy2log[p] as number;
      phyLoad[p] = f32((nodeLoad[m] as number) / (rep.logcnt[m] as number));
    }
    const pk = balancedPacking(phyLoad, gpusPerNode);
    // 4. back to logical ids, in physical slot order
    for (let p = 0; p < phyPerNode; p++) {
      const slot = (pk.packIndex[p] as number) * phyPerGpu + (pk.rankInPack[p] as number);
      const global = node * phyPerNode + slot;
      phy2log[global] = mlog2log[node * logPerNode + (rep.phy2log[p] as number)] as number;
      phyrank[global] = rep.rank[p] as number;
    }
  }
  const logcnt = new Int32Array(E);
  for (let e = 0; e < E; e++) logcnt[e] = mlogcnt[log2mlog[e] as number] as number;
  return { phy2log, phyrank, logcnt };
}

export interface RebalanceResult {
  /** [layers][numReplicas] logical expert held by each physical slot (slot s lives on GPU floor(s / (R/G))). */
  phy2log: number[][];
  /**
   * [layers][experts][maxReplicas] physical slots of each logical expert, indexed by replica rank,
   * padded with -1 up to the largest replica count over all layers.
   */
  log2phy: number[][][];
  /** [layers][experts] number of replicas of each logical expert. */
  logcnt: number[][];
  /** [layers][numReplicas] replica rank of each physical slot. */
  phyrank: number[][];
  /** Which policy ran. */
  policy: 'hierarchical' | 'global';
}

function checkInt(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive integer, got ${v}`);
}

function toRows(weight: ReadonlyArray<ArrayLike<number>>): Float32Array[] {
  if (weight.length === 0) throw new Error('weight must have at least one layer');
  const E = (weight[0] as ArrayLike<number>).length;
  if (E === 0) throw new Error('weight rows must have at least one expert');
  return weight.map((row, l) => {
    if (row.length !== E) throw new Error(`weight row ${l} has ${row.length} experts, row 0 has ${E}`);
    const r = new Float32Array(E);
    for (let e = 0; e < E; e++) {
      const v = row[e] as number;
      if (!Number.isFinite(v) || v < 0)
        throw new Error(`load of layer ${l}, expert ${e} is not a finite non-negative number (${v})`);
      r[e] = v;
    }
    return r;
  });
}

/**
 * DeepSeek's EPLB `rebalance_experts`. `weight` is [layers][experts] (number[][] or an array of typed
 * rows) of expert loads. Hierarchical policy when numGroups % numNodes == 0, global otherwise.
 */
export function rebalanceExperts(
  weight: ReadonlyArray<ArrayLike<number>>,
  numReplicas: number,
  numGroups: number,
  numNodes: number,
  numGpus: number,
): RebalanceResult {
  checkInt('numReplicas', numReplicas);
  checkInt('numGroups', numGroups);
  checkInt('numNodes', numNodes);
  checkInt('numGpus', numGpus);
  const rows = toRows(weight);
  const E = (rows[0] as Float32Array).length;
  if (numGpus % numNodes !== 0) throw new Error(`numGpus=${numGpus} is not a multiple of numNodes=${numNodes}`);
  if (numReplicas % numGpus !== 0) {
    throw new Error(`numReplicas=${numReplicas} is not a multiple of numGpus=${numGpus}`);
  }
  if (numReplicas < E) throw new Error(`numReplicas=${numReplicas} is fewer than the ${E} logical experts`);
  const hierarchical = numGroups % numNodes === 0;
  if (hierarchical) {
    if (E % numGroups !== 0) throw new Error(`${E} experts cannot be split into numGroups=${numGroups} groups`);
  }
  const phy2log: number[][] = [];
  const phyrank: number[][] = [];
  const logcnt: number[][] = [];
  for (const row of rows) {
    const r = hierarchical
      ? rebalanceLayerHierarchical(row, numReplicas, numGroups, numNodes, numGpus)
      : rebalanceLayerHierarchical(row, numReplicas, 1, 1, numGpus);
    phy2log.push(Array.from(r.phy2log));
    phyrank.push(Array.from(r.phyrank));
    logcnt.push(Array.from(r.logcnt));
  }
  let maxCnt = 0;
  for (const c of logcnt) for (const v of c) maxCnt = Math.max(maxCnt, v);
  const log2phy = phy2log.map((p2l, l) => {
    const m = Array.from({ length: E }, () => new Array<number>(maxCnt).fill(-1));
    const ranks = phyrank[l] as number[];
    p2l.forEach((e, s) => {
      (m[e] as number[])[ranks[s] as number] = s;
    });
    return m;
  });
  return { phy2log, log2phy, logcnt, phyrank, policy: hierarchical ? 'hierarchical' : 'global' };
}

export interface GpuLoadStats {
  /** [layers][numGpus] load per GPU: Σ over its slots of load(expert) / replicas(expert). */
  loads: number[][];
  /** [layers] max GPU load. */
  max: number[];
  /** [layers] mean GPU load. */
  mean: number[];
  /** [layers] max / mean (1 = perfect balance). */
  maxOverMean: number[];
}

/**
 * Per-GPU loads of a placement, assuming each expert's load splits evenly over its replicas. Slots are
 * assigned to GPUs contiguously (R/numGpus each). Computed in float64.
 */
export function gpuLoads(
  weight: ReadonlyArray<ArrayLike<number>>,
  phy2log: ReadonlyArray<ArrayLike<number>>,
  logcnt: ReadonlyArray<ArrayLike<number>>,
  numGpus: number,
): GpuLoadStats {
  checkInt('numGpus', numGpus);
  if (phy2log.length !== weight.length || logcnt.length !== weight.length) {
    throw new Error(`weight, phy2log and logcnt must have the same number of layers`);
  }
  const loads: number[][] = [];
  const max: number[] = [];
  const mean: number[] = [];
  const maxOverMean: number[] = [];
  weight.forEach((w, l) => {
    const p2l = phy2log[l] as ArrayLike<number>;
    const cnt = logcnt[l] as ArrayLike<number>;
    const R = p2l.length;
    if (R % numGpus !== 0) throw new Error(`${R} physical slots are not a multiple of numGpus=${numGpus}`);
    const per = R / numGpus;
    const g = new Array<number>(numGpus).fill(0);
    for (let s = 0; s < R; s++) {
      const e = p2l[s] as number;
      if (!(e >= 0 && e < w.length)) throw new Error(`phy2log[${l}][${s}] = ${e} is not an expert`);
      g[Math.floor(s / per)]! += (w[e] as number) / (cnt[e] as number);
    }
    const mx = Math.max(...g);
    const mn = g.reduce((a, b) => a + b, 0) / numGpus;
    loads.push(g);
    max.push(mx);
    mean.push(mn);
    maxOverMean.push(mn === 0 ? 1 : mx / mn);
  });
  return { loads, max, mean, maxOverMean };
}
