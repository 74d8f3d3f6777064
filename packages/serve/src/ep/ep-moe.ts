// One MoE layer run expert-parallel: attention is data-parallel (each rank routes its own tokens with
// its copy of the gate), the experts are spread over the ranks by an ExpertPlacement. A rank sends
// each (token, expert) pair to one of the ranks holding a copy of the expert (spread over them) with
// one uneven all-to-all (the rows carry their expert id), computes the pairs it received expert by
// expert, returns the outputs with a second all-to-all, and combines them with the routing weights
// in the colocated layer's order (routed experts by ascending id, then the shared expert).
import { reshape, tensor, type Tensor } from '@dsv3/core';
import type { MoE } from '@dsv3/moe';
import type { ProcessGroup } from '@dsv3/parallel';
import type { ExpertPlacement } from './placement.js';

export interface EpLayerStats {
  /** tokens of this rank routed to each logical expert since the counters were last reset */
  routed: Float64Array;
  /** (token, expert) rows this rank computed since the counters were last reset */
  computed: number;
}

export class ExpertParallelMoE {
  readonly stats: EpLayerStats;
  readonly logicalExperts: number;

  constructor(
    readonly moe: MoE,
    readonly layer: number,
    readonly group: ProcessGroup,
    private readonly placement: () => ExpertPlacement,
  ) {
    this.logicalExperts = moe.config.nRoutedExperts + (moe.sharedExperts ? 1 : 0);
    this.stats = { routed: new Float64Array(this.logicalExperts), computed: 0 };
  }

  /** The layer's output for x [..., H]; every rank of the group calls it together (x may be empty). */
  async forward(x: Tensor): Promise<Tensor> {
    const H = this.moe.config.hiddenSize;
    const x2 = reshape(x, [-1, H]);
    const T = x2.shape[0]!;
    const E = this.moe.config.nRoutedExperts;
    const xh = Float32Array.from((await x2.data()) as ArrayLike<number>);
    // (token, expert, weight) pairs in the colocated combine order
    const tok: number[] = [];
    const exp: number[] = [];
    const wt: number[] = [];
    if (T > 0) {
      const g = await this.moe.gate.forwardAsync(x2);
      for (let t = 0; t < T; t++) {
        const slots = Array.from({ length: g.k }, (_, j) => j).sort((a, b) => g.indicesHost[t * g.k + a]! - g.indicesHost[t * g.k + b]!);
        for (const j of slots) {
          tok.push(t);
          exp.push(g.indicesHost[t * g.k + j]!);
          wt.push(Math.fround(g.weightsHost[t * g.k + j]!));
        }
        if (this.moe.sharedExperts) {
          tok.push(t);
          exp.push(E);
          wt.push(1);
        }
      }
    }
    const place = this.placement();
    const P = this.group.size;
    const me = this.group.rank;
    const dest = exp.map((e, i) => {
      this.stats.routed[e]!++;
      // spread over the copies (what EPLB's balance assumes); tokens differ per rank, so does the start
      const reps = place.replicas[this.layer]![e]!;
      return reps[(tok[i]! + me) % reps.length]!;
    });
    // rows grouped by destination rank, each [expert id, x(token)]
    const order = dest.map((_, i) => i).sort((a, b) => dest[a]! - dest[b]! || a - b);
    const splits = new Array<number>(P).fill(0);
    for (const d of dest) splits[d]!++;
    const W = H + 1;
    const send = new Float32Array(order.length * W);
    order.forEach((i, r) => {
      send[r * W] = exp[i]!;
      send.set(xh.subarray(tok[i]! * H, (tok[i]! + 1) * H), r * W + 1);
    });
    // host arrays split by elements: W per row going, H per row coming back
    const { output: recv, outputSplits } = await this.group.allToAll(send, splits.map((n) => n * W)).wait();
    const y = await this.compute(recv, W);
    const { output: back } = await this.group.allToAll(y, outputSplits.map((n) => (n / W) * H), splits.map((n) => n * H)).wait();
    // back[r] answers order[r]; combine per token in pair order
    const rowOf = new Int32Array(order.length);
    order.forEach((i, r) => (rowOf[i] = r));
    const out = new Float32Array(T * H);
    const shared = new Float32Array(T * H);
    for (let i = 0; i < tok.length; i++) {
      const t = tok[i]!;
      const src = back.subarray(rowOf[i]! * H, (rowOf[i]! + 1) * H);
      const dst = exp[i] === E ? shared : out;
      for (let h = 0; h < H; h++) dst[t * H + h] = Math.fround(dst[t * H + h]! + Math.fround(wt[i]! * src[h]!));
    }
    if (this.moe.sharedExperts) for (let i = 0; i < out.length; i++) out[i] = Math.fround(out[i]! + shared[i]!);
    return reshape(tensor(out, { dtype: 'f32', backend: x.backend, shape: [T, H] }), x.shape);
  }

  /** Expert outputs [n, H] for received rows [n, 1 + H] (expert id, input), expert by expert. */
  private async compute(recv: Float32Array, W: number): Promise<Float32Array> {
    const H = W - 1;
    const n = recv.length / W;
    this.stats.computed += n;
    const y = new Float32Array(n * H);
    const byExpert = new Map<number, number[]>();
    for (let r = 0; r < n; r++) {
      const e = recv[r * W]!;
      const rows = byExpert.get(e);
      if (rows) rows.push(r);
      else byExpert.set(e, [r]);
    }
    const E = this.moe.config.nRoutedExperts;
    const be = this.moe.gate.weight.value.backend;
    for (const [e, rows] of byExpert) {
      const xs = new Float32Array(rows.length * H);
      rows.forEach((r, i) => xs.set(recv.subarray(r * W + 1, (r + 1) * W), i * H));
      const module = e === E ? this.moe.sharedExperts! : this.moe.experts.at(e);
      const out = (await module.forward(tensor(xs, { dtype: 'f32', backend: be, shape: [rows.length, H] })).data()) as Float32Array;
      rows.forEach((r, i) => y.set(out.subarray(i * H, (i + 1) * H), r * H));
    }
    return y;
  }

  resetStats(): void {
    this.stats.routed.fill(0);
    this.stats.computed = 0;
  }
}
