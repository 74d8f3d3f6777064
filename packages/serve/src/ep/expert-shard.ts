// The experts one EP rank keeps in memory: those its placement puts on it (its routed experts plus
// EPLB's redundant copies; the shared expert counts as one more). The others' weights are freed; a
// re-placement frees what the rank no longer holds and reads what it newly holds from the checkpoint
// (the file is the one copy every rank can read, so no weights travel between ranks).
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
import type { DeepseekV3ForCausalLM } from '@dsv3/model';
import { MoE } from '@dsv3/moe';
import type { ExpertPlacement } from './placement.js';

interface ShardedLayer {
  moe: MoE;
  /** checkpoint name prefix of the layer's MLP, e.g. 'model.layers.3.mlp.' */
  prefix: string;
  /** logical experts whose weights this rank holds */
  held: Set<number>;
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
   * checkpoint the model was loaded from (where newly placed experts are read).
   */
  constructor(
    readonly model: DeepseekV3ForCausalLM,
    readonly dir: string,
    readonly rank: number,
  ) {
    model.model.layers.items.forEach((layer, i) => {
      if (!(layer.mlp instanceof MoE)) return;
      const E = layer.mlp.config.nRoutedExperts + (layer.mlp.sharedExperts ? 1 : 0);
      this.layers.push({
        moe: layer.mlp,
        prefix: `model.layers.${i}.mlp.`,
        held: new Set(Array.from({ length: E }, (_, e) => e)),
      });
    });
    const first = this.layers[0];
    if (!first) throw new Error('the model has no MoE layer to shard');
    for (const [name, p] of first.moe.experts.at(0).namedParameters())
      if (!['f32', 'bf16'].includes(p.value.dtype))
        throw new TypeError(
          `expert-parallel sharding reads f32 or bf16 expert weights; ${first.prefix}experts.0.${name} is ${p.value.dtype}`,
        );
    this.bytesPerExpert = paramBytes(first.moe.experts.at(0));
    this.bytesShared = first.moe.sharedExperts ? paramBytes(first.moe.sharedExperts) : 0;
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
            q.value = readInto(ckpt, ck, q.value.dtype, q.value.shape, q.value.backend);
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

function paramBytes(m: Module): number {
  let n = 0;
  for (const [, p] of m.namedParameters()) n += p.value.size * bytesPerElement(p.value.dtype);
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
