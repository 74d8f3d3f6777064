// One MoE layer run expert-parallel: attention is data-parallel (each rank routes its own tokens with
// its copy of the gate), the experts are spread over the ranks by an ExpertPlacement. A rank sends
// each (token, expert) pair to one of the ranks holding a copy of the expert (spread over them) with
// one uneven all-to-all (the rows carry their expert id), computes the pairs it received expert by
// expert, returns the outputs with a second all-to-all, and combines them with the routing weights
// in the colocated layer's order (routed experts by ascending id, then the shared expert).
import { narrow, reshape, tensor, type Tensor } from '@dsv3/core';
import type { MoE } from '@dsv3/moe';
import type { AllToAllResult, ProcessGroup, Work } from '@dsv3/parallel';
import type { ExpertPlacement } from './placement.js';

interface Plan {
  tok: number[];
  exp: number[];
  wt: number[];
  /** pair indices in send order (grouped by destination rank) */
  order: number[];
  /** pairs sent to each rank */
  splits: number[];
  send: Float32Array;
}

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

  /**
   * Split each batch in two micro-batches and overlap one's all-to-all with the other's gate and
   * expert computation (DeepSeek-V3's two-micro-batch overlap, here within the MoE layer). Every rank
   * of the group must use the same setting: it changes the number of all-to-alls per layer.
   */
  twoMicroBatches = false;

  /** The layer's output for x [..., H]; every rank of the group calls it together (x may be empty). */
  async forward(x: Tensor): Promise<Tensor> {
    const H = this.moe.config.hiddenSize;
    const x2 = reshape(x, [-1, H]);
    const T = x2.shape[0]!;
    const xh = Float32Array.from((await x2.data()) as ArrayLike<number>);
    const out = new Float32Array(T * H);
    const shared = new Float32Array(T * H);
    const half = Math.ceil(T / 2);
    const parts = this.twoMicroBatches ? [[0, half] as const, [half, T - half] as const] : [[0, T] as const];
    if (parts.length === 1) {
      const p = await this.plan(x2, xh, 0, T);
      const recv = await this.dispatch(p).wait();
      const back = await this.giveBack(p, recv.output, recv.outputSplits).wait();
      this.combine(p, back.output, out, shared);
    } else {
      // A's dispatch travels while B is routed; B's while A's experts run; A's results travel back
      // while B's experts run
      const pa = await this.plan(x2, xh, parts[0]![0], parts[0]![1]);
      const da = this.dispatch(pa);
      const pb = await this.plan(x2, xh, parts[1]![0], parts[1]![1]);
      const db = this.dispatch(pb);
      const ra = await da.wait();
      const ba = this.giveBack(pa, ra.output, ra.outputSplits);
      const rb = await db.wait();
      const bb = this.giveBack(pb, rb.output, rb.outputSplits);
      this.combine(pa, (await ba.wait()).output, out, shared);
      this.combine(pb, (await bb.wait()).output, out, shared);
    }
    if (this.moe.sharedExperts) for (let i = 0; i < out.length; i++) out[i] = Math.fround(out[i]! + shared[i]!);
    return reshape(tensor(out, { dtype: 'f32', backend: x.backend, shape: [T, H] }), x.shape);
  }

  /** Routes tokens [start, start + count) and packs their (token, expert) rows by destination rank. */
  private async plan(x2: Tensor, xh: Float32Array, start: number, count: number): Promise<Plan> {
    const H = this.moe.config.hiddenSize;
    const E = this.moe.config.nRoutedExperts;
    // (token, expert, weight) pairs in the colocated combine order
    const tok: number[] = [];
    const exp: number[] = [];
    const wt: number[] = [];
    if (count > 0) {
      const g = this.moe.gate.forward(count === x2.shape[0] ? x2 : narrow(x2, 0, start, count));
      // the all-to-all is sized and packed on the host: read the routing here
      const indices = await g.indices.data();
      const weights = await g.weights.data();
      for (let i = 0; i < count; i++) {
        const slots = Array.from({ length: g.k }, (_, j) => j).sort(
          (a, b) => indices[i * g.k + a]! - indices[i * g.k + b]!,
        );
        for (const j of slots) {
          tok.push(start + i);
          exp.push(indices[i * g.k + j]!);
          wt.push(Math.fround(weights[i * g.k + j]!));
        }
        if (this.moe.sharedExperts) {
          tok.push(start + i);
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
    const order = dest.map((_, i) => i).sort((a, b) => dest[a]! - dest[b]! || a - b);
    const splits = new Array<number>(P).fill(0);
    for (const d of dest) splits[d]!++;
    const W = H + 1;
    const send = new Float32Array(order.length * W);
    order.forEach((i, r) => {
      send[r * W] = exp[i]!;
      send.set(xh.subarray(tok[i]! * H, (tok[i]! + 1) * H), r * W + 1);
    });
    return { tok, exp, wt, order, splits, send };
  }

  // host arrays split by elements: H + 1 per row going (expert id, input), H per row coming back
  private dispatch(p: Plan): Work<AllToAllResult<Float32Array>> {
    const W = this.moe.config.hiddenSize + 1;
    return this.group.allToAll(
      p.send,
      p.splits.map((n) => n * W),
    );
  }

  /** Computes the received rows and starts sending the results back. */
  private giveBack(p: Plan, recv: Float32Array, recvSplits: readonly number[]): Work<AllToAllResult<Float32Array>> {
    const H = this.moe.config.hiddenSize;
    const y = this.compute(recv, H + 1);
    return this.group.allToAll(
      y,
      recvSplits.map((n) => (n / (H + 1)) * H),
      p.splits.map((n) => n * H),
    );
  }

  private combine(p: Plan, back: Float32Array, out: Float32Array, shared: Float32Array): void {
    const H = this.moe.config.hiddenSize;
    const E = this.moe.config.nRoutedExperts;
    // back[r] answers pair order[r]
    const rowOf = new Int32Array(p.order.length);
    p.order.forEach((i, r) => (rowOf[i] = r));
    for (let i = 0; i < p.tok.length; i++) {
      const t = p.tok[i]!;
      const src = back.subarray(rowOf[i]! * H, (rowOf[i]! + 1) * H);
      const dst = p.exp[i] === E ? shared : out;
      for (let h = 0; h < H; h++) dst[t * H + h] = Math.fround(dst[t * H + h]! + Math.fround(p.wt[i]! * src[h]!));
    }
  }

  /** Expert outputs [n, H] for received rows [n, 1 + H] (expert id, input), expert by expert. */
  private compute(recv: Float32Array, W: number): Float32Array {
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
      const out = module
        .forward(tensor(xs, { dtype: 'f32', backend: be, shape: [rows.length, H] }))
        .dataSync() as Float32Array;
      rows.forEach((r, i) => y.set(out.subarray(i * H, (i + 1) * H), r * H));
    }
    return y;
  }

  resetStats(): void {
    this.stats.routed.fill(0);
    this.stats.computed = 0;
  }
}
