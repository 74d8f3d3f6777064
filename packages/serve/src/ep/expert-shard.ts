// The experts one EP rank keeps in memory: those its placement puts on it (its routed experts plus
// EPLB's redundant copies; the shared expert counts as one more). The others' weights are freed; a
// re-placement frees what the rank no longer holds and reads what it newly holds from the checkpoint
// (the file is the one copy every rank can read, so no weights travel between ranks). At start-up a
// rank reads only its experts of the first placement (startupKeep, loadModel's `keep`): the others
// are never read, so its peak memory is what it holds, not the whole model.
import {
  bytesPerElement,
  cpu,
  fromRaw,
  readShardedCheckpoint,
  readTensorInto,
  Tensor,
  type DType,
  type Module,
  type StorageArray,
} from '@dsv3/core';
import { isMoeLayer, type DeepseekV3ForCausalLM, type ModelConfig } from '@dsv3/model';
import { MoE } from '@dsv3/moe';
import { roundRobinPlacement, type ExpertPlacement } from './placement.js';

interface ShardedLayer {
  moe: MoE;
  /** checkpoint name prefix of the layer's MLP, e.g. 'model.layers.3.mlp.' */
  prefix: string;
  /** logical experts whose weights this rank holds */
  held: Set<number>;
  /** storage dtype of each expert parameter (as loaded), for the experts read later */
  dtypes: Map<string, DType>;
}

/** The logical experts of each MoE layer: the routed ones, plus the shared expert as one more. */
export function logicalExperts(config: ModelConfig): number {
  return config.nRoutedExperts + (config.nSharedExperts > 0 ? 1 : 0);
}

/** Where the experts start: one copy of each, round-robin over the ranks (what ExpertParallelServer places first). */
export function startupPlacement(config: ModelConfig, ranks: number): ExpertPlacement {
  const layers = Array.from({ length: config.numHiddenLayers }, (_, i) => i).filter((i) => isMoeLayer(config, i));
  return roundRobinPlacement(layers.length, logicalExperts(config), ranks);
}

/**
 * loadModel's `keep` for EP rank `rank` of `ranks`: every weight but the decoder MoE layers' experts,
 * and of those the ones the start-up placement puts on this rank (the MTP layers' experts are not
 * sharded: all kept). Pass the server `expertsLoaded: 'own'` with a model loaded this way.
 */
export function startupKeep(config: ModelConfig, rank: number, ranks: number): (name: string) => boolean {
  if (!(Number.isInteger(rank) && rank >= 0 && rank < ranks))
    throw new RangeError(`EP rank ${rank} is outside a group of ${ranks} ranks`);
  const placement = startupPlacement(config, ranks);
  const moeIndex = new Map<number, number>();
  for (let i = 0; i < config.numHiddenLayers; i++) if (isMoeLayer(config, i)) moeIndex.set(i, moeIndex.size);
  const E = config.nRoutedExperts;
  return (name) => {
    const m = /^model\.layers\.(\d+)\.mlp\.(?:experts\.(\d+)|(shared_experts))\./.exec(name);
    const li = m ? moeIndex.get(Number(m[1])) : undefined;
    if (!m || li === undefined) return true;
    const e = m[3] ? E : Number(m[2]);
    return placement.replicas[li]![e]!.includes(rank);
  };
}

export interface ShardBytes {
  /** bytes of the expert weights this rank holds (EP-sharded layers) */
  held: number;
  /** bytes all experts of those layers take (what every rank would hold without sharding) */
  all: number;
  /** expert copies this rank holds, all layers together */
  experts: number;
}

export class ExpertShard {
  private readonly layers: ShardedLayer[] = [];
  private readonly bytesPerExpert: number;
  private readonly bytesShared: number;

  /**
   * `model`'s decoder MoE layers, in order, as ExpertParallelServer numbers them; `dir` is the
   * checkpoint the model was loaded from (where newly placed experts are read). `loaded`: the placement
   * whose experts on this rank the model was loaded with (startupKeep); absent, it holds every expert.
   */
  constructor(
    readonly model: DeepseekV3ForCausalLM,
    readonly dir: string,
    readonly rank: number,
    loaded?: ExpertPlacement,
  ) {
    model.model.layers.items.forEach((layer, i) => {
      if (!(layer.mlp instanceof MoE)) return;
      const E = layer.mlp.config.nRoutedExperts + (layer.mlp.sharedExperts ? 1 : 0);
      const li = this.layers.length;
      const all = Array.from({ length: E }, (_, e) => e);
      const held = new Set(loaded ? all.filter((e) => loaded.replicas[li]?.[e]?.includes(rank)) : all);
      this.layers.push({ moe: layer.mlp, prefix: `model.layers.${i}.mlp.`, held, dtypes: new Map() });
    });
    const first = this.layers[0];
    if (!first) throw new Error('the model has no MoE layer to shard');
    if (loaded && loaded.replicas.length !== this.layers.length)
      throw new RangeError(
        `the model was loaded for a placement of ${loaded.replicas.length} MoE layers; it has ${this.layers.length}`,
      );
    for (const l of this.layers) {
      // the loaded experts' dtypes (an expert never read is an f32 placeholder); freed: those not held
      const routed = [...l.held].find((e) => e < l.moe.config.nRoutedExperts);
      const sample = routed === undefined ? null : l.moe.experts.at(routed);
      for (const [name, p] of sample?.namedParameters() ?? []) {
        if (!['f32', 'bf16'].includes(p.value.dtype))
          throw new TypeError(
            `expert-parallel sharding reads f32 or bf16 expert weights; ${l.prefix}experts.${routed}.${name} is ${p.value.dtype}`,
          );
        l.dtypes.set(name, p.value.dtype);
      }
      if (loaded)
        for (let e = 0; e < l.moe.config.nRoutedExperts + (l.moe.sharedExperts ? 1 : 0); e++)
          if (!l.held.has(e)) for (const [, q] of this.module(l, e).namedParameters()) q.value.dispose();
    }
    this.bytesPerExpert = paramBytes(first.moe.experts.at(0), first.dtypes);
    this.bytesShared = first.moe.sharedExperts ? paramBytes(first.moe.sharedExperts, first.dtypes) : 0;
  }

  /** Frees the experts `p` does not put on this rank and reads the ones it newly puts here. */
  apply(p: ExpertPlacement): void {
    if (p.replicas.length !== this.layers.length)
      throw new RangeError(
        `a placement of ${p.replicas.length} layers for a model of ${this.layers.length} MoE layers`,
      );
    const ckpt = readShardedCheckpoint(this.dir);
    try {
      this.layers.forEach((l, li) => {
        const want = new Set<number>();
        p.replicas[li]!.forEach((ranks, e) => {
          if (ranks.includes(this.rank)) want.add(e);
        });
        for (const e of l.held)
          if (!want.has(e)) for (const [, q] of this.module(l, e).namedParameters()) q.value.dispose();
        for (const e of want) {
          if (l.held.has(e)) continue;
          for (const [name, q] of this.module(l, e).namedParameters()) {
            const ck = `${l.prefix}${this.expertPath(l, e)}.${name}`;
            q.value = readInto(ckpt, ck, l.dtypes.get(name) ?? q.value.dtype, q.value.shape, q.value.backend);
          }
        }
        l.held = want;
      });
    } finally {
      ckpt.close();
    }
  }

  /** Whether this rank holds logical expert `e` of MoE layer `layer`. */
  holds(layer: number, e: number): boolean {
    return this.layers[layer]?.held.has(e) ?? false;
  }

  bytes(): ShardBytes {
    const E = this.layers[0]!.moe.config.nRoutedExperts;
    const one = (e: number): number => (e === E ? this.bytesShared : this.bytesPerExpert);
    let held = 0;
    let experts = 0;
    for (const l of this.layers)
      for (const e of l.held) {
        held += one(e);
        experts++;
      }
    const all = this.layers.length * (E * this.bytesPerExpert + this.bytesShared);
    return { held, all, experts };
  }

  private module(l: ShardedLayer, e: number): Module {
    return e === l.moe.config.nRoutedExperts ? l.moe.sharedExperts! : l.moe.experts.at(e);
  }

  private expertPath(l: ShardedLayer, e: number): string {
    return e === l.moe.config.nRoutedExperts ? 'shared_experts' : `experts.${e}`;
  }
}

/** Bytes of a module's parameters in the dtypes experts are loaded in (held or not). */
function paramBytes(m: Module, dtypes: Map<string, DType>): number {
  let n = 0;
  for (const [name, p] of m.namedParameters()) n += p.value.size * bytesPerElement(dtypes.get(name) ?? p.value.dtype);
  return n;
}

/** One weight from the checkpoint as a tensor of `dtype` (resident in the GEMM engine's memory on the CPU). */
function readInto(
  ckpt: ReturnType<typeof readShardedCheckpoint>,
  name: string,
  dtype: DType,
  shape: readonly number[],
  backend: Tensor['backend'],
): Tensor {
  const info = ckpt.info(name);
  if (info.shape.join() !== shape.join())
    throw new RangeError(
      `${name}: the checkpoint holds [${info.shape.join(', ')}], the model expects [${shape.join(', ')}]`,
    );
  const count = shape.reduce((a, b) => a * b, 1);
  if (backend === cpu) {
    const storage = cpu.allocResident(dtype, count);
    readTensorInto(ckpt, name, dtype, storage.data);
    return new Tensor(cpu, storage, shape, dtype);
  }
  const host = cpu.alloc(dtype, count).data as StorageArray;
  readTensorInto(ckpt, name, dtype, host);
  return fromRaw(dtype, shape, host, backend);
}
