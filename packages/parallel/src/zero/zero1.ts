// ZeRO stage 1: AdamW whose state is sharded over a data-parallel group. Each parameter group is laid
// out as one flat vector (padded to a multiple of the group size); a step reduce-scatters the summed
// gradients, so rank i holds the whole-batch gradient of block i; clips by the global norm (one
// all-reduce of the squared norms); steps its block with core's AdamW (bf16 or f32 moments, the f32
// block of master weights); and all-gathers the updated blocks back into every rank's parameters.
// Per element the update is the unsharded AdamW's, so only the order of the gradient sums differs.
import {
  AdamW,
  cpu,
  CpuStorage,
  cpuData,
  fromRaw,
  mul,
  noGrad,
  Parameter,
  sumOfSquares,
  Tensor,
  type GradientArray,
} from '@dsv3/core';
import type { ProcessGroup } from '../comm/group.js';

export interface ZeroParamGroup {
  params: readonly Parameter[];
  weightDecay: number;
  /**
   * The ranks holding these parameters, over which their gradients are summed and their state sharded
   * (default: the optimizer's group). Parameters sharded by stage or expert are held by fewer ranks.
   */
  group?: ProcessGroup;
}

export interface ZeroOptions {
  betas?: [number, number];
  eps?: number;
  /** Moment dtype (DeepSeek-V3: bf16). */
  momentDType?: 'bf16' | 'f32';
}

/** One rank's part of the optimizer: its block of master weights and moments, per parameter group. */
export interface ZeroShardState {
  step: number;
  rank: number;
  size: number;
  tensors: Record<string, Tensor>;
}

interface FlatGroup {
  params: readonly Parameter[];
  /** The ranks sharing these parameters. */
  pg: ProcessGroup;
  offsets: number[];
  /** Elements before padding. */
  length: number;
  /** Block length on each rank. */
  block: number;
  dtype: 'f32' | 'f64';
  master: Parameter;
  adam: AdamW;
  /** The group's summed gradients before the reduce-scatter, kept across steps (padding stays zero). */
  grads: GradientArray | null;
}

export class Zero1AdamW {
  private readonly groups: FlatGroup[];

  constructor(
    groups: readonly ZeroParamGroup[],
    /**
     * The data-parallel group the state is sharded over (gradients are summed over it), unless a
     * parameter group names its own; the gradient norm is summed over it (then every rank of it must
     * step, and its parameter groups' own groups must cover each parameter once per rank set).
     */
    readonly group: ProcessGroup,
    readonly options: ZeroOptions = {},
  ) {
    this.groups = groups.map((g, i) => this.flatten(g, i));
  }

  private flatten(g: ZeroParamGroup, index: number): FlatGroup {
    const dtypes = new Set(g.params.map((p) => p.value.dtype));
    if (dtypes.size > 1 || ![...dtypes].every((d) => d === 'f32' || d === 'f64'))
      throw new TypeError(
        `ZeRO-1: parameter group ${index} mixes or uses non-master dtypes (${[...dtypes].join(', ')}); master weights must all be f32 (or all f64)`,
      );
    const dtype = (dtypes.values().next().value ?? 'f32') as 'f32' | 'f64';
    const offsets = [0];
    for (const p of g.params) offsets.push(offsets.at(-1)! + p.value.size);
    const length = offsets.at(-1)!;
    const pg = g.group ?? this.group;
    const P = pg.size;
    const block = Math.max(1, Math.ceil(length / P));
    const flat = this.gatherValues(g.params, offsets, block * P, dtype);
    const mine = flat.slice(pg.rank * block, (pg.rank + 1) * block);
    const master = new Parameter(fromRaw(dtype, [block], mine));
    const adam = new AdamW([master], {
      betas: this.options.betas,
      eps: this.options.eps,
      weightDecay: g.weightDecay,
      stateDType: this.options.momentDType ?? 'bf16',
    });
    return { params: g.params, pg, offsets, length, block, dtype, master, adam, grads: null };
  }

  private gatherValues(
    params: readonly Parameter[],
    offsets: number[],
    padded: number,
    dtype: 'f32' | 'f64',
  ): Float32Array | Float64Array {
    const flat = dtype === 'f64' ? new Float64Array(padded) : new Float32Array(padded);
    params.forEach((p, i) => flat.set(p.value.dataSync() as Float32Array | Float64Array, offsets[i]!));
    return flat;
  }

  get step(): number {
    return this.groups[0]?.adam.step ?? 0;
  }

  zeroGrad(): void {
    for (const g of this.groups) for (const p of g.params) p.value.zeroGrad();
  }

  /**
   * One update from the gradients in the parameters' `.grad` (each rank's own; they are summed over the
   * group here). Clips to `clipNorm` by the global norm when given; returns the norm before clipping.
   */
  async stepUpdate(lr: number, clipNorm?: number): Promise<{ gradNorm: number }> {
    const shards: Tensor[] = [];
    let sq = 0;
    for (const g of this.groups) {
      const n = g.block * g.pg.size;
      g.grads ??= g.dtype === 'f64' ? new Float64Array(n) : new Float32Array(n);
      const flat = g.grads;
      g.params.forEach((p, i) => {
        const part = flat.subarray(g.offsets[i]!, g.offsets[i + 1]!);
        if (p.grad) part.set(cpuData(p.grad) ?? (p.grad.dataSync() as GradientArray));
        else part.fill(0);
      });
      const mine = await g.pg.reduceScatter(flat, 'sum').wait();
      shards.push(fromRaw(g.dtype, [g.block], mine));
      sq += sumOfSquares(mine);
    }
    const norm = Math.sqrt((await this.group.allReduce(Float64Array.of(sq), 'sum').wait())[0]!);
    if (!Number.isFinite(norm)) throw new Error(`ZeRO-1: the gradient norm is ${norm} (a NaN or Inf gradient)`);
    const scale = clipNorm !== undefined && norm > clipNorm ? clipNorm / (norm + 1e-6) : 1;
    for (const [i, g] of this.groups.entries()) {
      g.master.grad = scale === 1 ? shards[i]! : noGrad(() => mul(shards[i]!, scale));
      g.adam.stepUpdate(lr);
      g.master.grad = null;
      const all = await g.pg.allGather(g.master.value.dataSync() as Float32Array | Float64Array).wait();
      this.scatterInto(g, all);
    }
    return { gradNorm: norm };
  }

  private scatterInto(g: FlatGroup, flat: Float32Array | Float64Array): void {
    g.params.forEach((p, i) => {
      const part = flat.slice(g.offsets[i]!, g.offsets[i + 1]!);
      // on the CPU the slice becomes the value (fromRaw would copy it once more)
      const value =
        p.value.backend === cpu
          ? new Tensor(cpu, new CpuStorage(part), p.value.shape, g.dtype)
          : fromRaw(g.dtype, p.value.shape, part, p.value.backend);
      p.assign(value);
    });
  }

  /**
   * The whole moments per parameter (all-gathered; every rank calls it), e.g. to write a checkpoint any
   * layout can resume from. Null entries: the optimizer has not stepped yet.
   */
  async fullMoments(): Promise<{ param: Parameter; m: Tensor; v: Tensor }[]> {
    const out: { param: Parameter; m: Tensor; v: Tensor }[] = [];
    for (const g of this.groups) {
      const slot = g.adam.moments(g.master);
      if (!slot) continue;
      const m = await g.pg.allGather(await slot.m.raw(), { dtype: slot.m.dtype }).wait();
      const v = await g.pg.allGather(await slot.v.raw(), { dtype: slot.v.dtype }).wait();
      g.params.forEach((p, i) => {
        const [a, b] = [g.offsets[i]!, g.offsets[i + 1]!];
        out.push({
          param: p,
          m: fromRaw(slot.m.dtype, p.value.shape, m.slice(a, b)),
          v: fromRaw(slot.v.dtype, p.value.shape, v.slice(a, b)),
        });
      });
    }
    return out;
  }

  /** Takes this rank's block of whole per-parameter moments (from any layout's checkpoint) and the step count. */
  loadFullMoments(step: number, moments: (p: Parameter) => { m: Tensor; v: Tensor } | undefined): void {
    for (const g of this.groups) {
      g.adam.step = step;
      const parts = g.params.map((p) => moments(p));
      if (parts.every((x) => !x)) continue;
      const missing = parts.findIndex((x) => !x);
      if (missing >= 0)
        throw new Error(`ZeRO-1: moments of parameter ${missing} of a group are missing from the checkpoint`);
      const flat = (which: 'm' | 'v') => {
        const a = new Float64Array(g.block * g.pg.size);
        parts.forEach((x, i) => a.set(noGrad(() => x![which].cast('f64')).dataSync(), g.offsets[i]!));
        return fromRaw('f64', [g.block], a.slice(g.pg.rank * g.block, (g.pg.rank + 1) * g.block));
      };
      g.adam.setMoments(g.master, { m: flat('m'), v: flat('v') });
    }
  }

  /** This rank's block of master weights and moments, for a sharded checkpoint. */
  shardState(): ZeroShardState {
    const tensors: Record<string, Tensor> = {};
    this.groups.forEach((g, i) => {
      tensors[`group${i}.master`] = g.master.value;
      const m = g.adam.moments(g.master);
      if (m) {
        tensors[`group${i}.exp_avg`] = m.m;
        tensors[`group${i}.exp_avg_sq`] = m.v;
      }
    });
    return { step: this.step, rank: this.group.rank, size: this.group.size, tensors };
  }

  /** Restores this rank's block (from the same layout) and all-gathers the master weights into the parameters. */
  async loadShardState(s: ZeroShardState): Promise<void> {
    if (s.size !== this.group.size || s.rank !== this.group.rank)
      throw new Error(
        `ZeRO-1: the checkpoint shard is rank ${s.rank} of ${s.size}; this is rank ${this.group.rank} of ${this.group.size} (resume with the same data-parallel layout)`,
      );
    for (const [i, g] of this.groups.entries()) {
      const master = s.tensors[`group${i}.master`];
      if (!master || master.size !== g.block)
        throw new Error(
          `ZeRO-1: the checkpoint shard lacks group${i}.master of ${g.block} elements (different model or layout?)`,
        );
      g.master.assign(master.dtype === g.dtype ? master : noGrad(() => master.cast(g.dtype)));
      g.adam.step = s.step;
      const m = s.tensors[`group${i}.exp_avg`];
      const v = s.tensors[`group${i}.exp_avg_sq`];
      if (m && v) g.adam.setMoments(g.master, { m, v });
      const all = await g.pg.allGather(g.master.value.dataSync() as Float32Array | Float64Array).wait();
      this.scatterInto(g, all);
    }
  }
}
