// Runs one rank's part of a pipeline schedule on a model split into stages, over point-to-point
// communication. Backward is split into B (input gradient, sent upstream at once) and W (weight
// gradients, run when the schedule says), so zero-bubble schedules fill their bubbles with W.
import type { Parameter, Tensor } from '@dsv3/core';
import { runStreams } from '../ep/streams.js';
import type { PointToPoint } from './channels.js';
import { splitBackwardAsync, type SplitBackwardResult } from './split-backward.js';
import type { Chunk, ComputeOp, Payload, Schedule } from './types.js';

/** A model stage: what one chunk of the pipeline computes (an nn.Module fits). */
export interface PipelineStage {
  /** May be async (an expert-parallel stage communicates in its forward and backward). */
  forward(x: Tensor): Tensor | Promise<Tensor>;
  parameters(): Parameter[];
}

export interface PipelineStepOptions {
  schedule: Schedule;
  /** This rank's endpoint; `comm.rank` is its position in the pipeline. */
  comm: PointToPoint;
  /** The stages this rank holds (schedule.rankStages[rank]), by stage index. */
  stages: ReadonlyMap<number, PipelineStage>;
  /** Input of micro-batch m (called where stage 0 of m runs). */
  input(microBatch: number): Tensor;
  /** Scalar loss of micro-batch m from the last stage's output (scale it as the step's loss needs). */
  loss(output: Tensor, microBatch: number): Tensor | Promise<Tensor>;
  /**
   * Run an FB op's forward and backward concurrently, so one chunk computes while the other's EP
   * all-to-all is in flight (default true). The backward runs in communication stream 1: its EP groups
   * need twins (createLayoutGroups(world, layout, options, EP_GROUP_KINDS)). false runs them back to
   * back, all in stream 0.
   */
  overlapForwardBackward?: boolean;
}

export interface PipelineStepResult {
  /** Loss of each micro-batch whose last stage ran on this rank. */
  losses: Map<number, number>;
  /** Compute ops as run: schedule index and performance.now() milliseconds (receives wait outside them). */
  trace: { index: number; kind: ComputeOp['kind']; deferW: boolean; start: number; end: number }[];
}

const key = (c: Chunk): string => `${c.stage}:${c.microBatch}`;
const msgKey = (payload: Payload, c: Chunk): string => `${payload}:${key(c)}`;

/**
 * Messages between two ranks arrive in send order, but a rank may need them in another order (DualPipe
 * interleaves two streams). Every rank knows the schedule, hence the order each peer sends in: a
 * receive pulls that peer's messages in order, keeping the ones needed later.
 */
class Inbox {
  private readonly expected = new Map<number, string[]>();
  private readonly pulled = new Map<number, number>();
  private readonly stash = new Map<string, Tensor>();
  constructor(
    private readonly comm: PointToPoint,
    schedule: Schedule,
  ) {
    schedule.ops.forEach((ops, peer) => {
      const keys = ops.flatMap((op) => (op.kind === 'send' && op.to === comm.rank ? [msgKey(op.payload, op)] : []));
      if (keys.length) this.expected.set(peer, keys);
    });
  }
  async take(from: number, k: string): Promise<Tensor> {
    const order = this.expected.get(from) ?? [];
    if (!order.includes(k))
      throw new Error(`pipeline rank ${this.comm.rank}: the schedule has rank ${from} never sending ${k}`);
    while (!this.stash.has(k)) {
      const i = this.pulled.get(from) ?? 0;
      this.pulled.set(from, i + 1);
      this.stash.set(order[i]!, await this.comm.recv(from));
    }
    const t = this.stash.get(k)!;
    this.stash.delete(k);
    return t;
  }
  get leftover(): string[] {
    return [...this.stash.keys()];
  }
}

interface ForwardState {
  input: Tensor | null;
  output: Tensor;
  loss: Tensor | null;
}

export async function runPipelineStep(o: PipelineStepOptions): Promise<PipelineStepResult> {
  const { schedule: s, comm } = o;
  const rank = comm.rank;
  if (comm.size !== s.ranks)
    throw new Error(`pipeline: the communicator has ${comm.size} ranks, the ${s.kind} schedule ${s.ranks}`);
  for (const st of s.rankStages[rank]!)
    if (!o.stages.has(st))
      throw new Error(
        `pipeline rank ${rank}: stage ${st} is missing (this rank holds stages ${s.rankStages[rank]!.join(', ')})`,
      );
  const inbox = new Inbox(comm, s);
  const received = new Map<string, Tensor>();
  const forwards = new Map<string, ForwardState>();
  const inputGrads = new Map<string, Tensor | null>();
  const outputs = new Map<string, Tensor>();
  const weightQueue: SplitBackwardResult[] = [];
  const sends: Promise<void>[] = [];
  const losses = new Map<number, number>();
  const last = s.stages - 1;

  const forward = async (c: Chunk): Promise<void> => {
    let input: Tensor | null = null;
    let x: Tensor;
    if (c.stage === 0) {
      x = o.input(c.microBatch);
    } else {
      const prev = key({ stage: c.stage - 1, microBatch: c.microBatch });
      const src = received.get(`activation:${prev}`) ?? outputs.get(prev);
      if (!src)
        throw new Error(`pipeline rank ${rank}: input of stage ${c.stage} micro-batch ${c.microBatch} not available`);
      received.delete(`activation:${prev}`);
      outputs.delete(prev);
      input = src.detach().requireGrad();
      x = input;
    }
    const output = await o.stages.get(c.stage)!.forward(x);
    let loss: Tensor | null = null;
    if (c.stage === last) {
      loss = await o.loss(output, c.microBatch);
      if (loss.size !== 1)
        throw new Error(
          `pipeline: loss of micro-batch ${c.microBatch} has shape [${loss.shape.join(', ')}], expected a scalar`,
        );
      losses.set(c.microBatch, loss.dataSync()[0]!);
    } else {
      outputs.set(key(c), output.detach());
    }
    forwards.set(key(c), { input, output, loss });
  };

  const backward = async (c: Chunk, deferW: boolean): Promise<void> => {
    const f = forwards.get(key(c));
    if (!f)
      throw new Error(
        `pipeline rank ${rank}: backward of stage ${c.stage} micro-batch ${c.microBatch} before its forward`,
      );
    forwards.delete(key(c));
    let grad: Tensor | undefined;
    if (c.stage !== last) {
      const next = key({ stage: c.stage + 1, microBatch: c.microBatch });
      grad = received.get(`gradient:${next}`) ?? inputGrads.get(next) ?? undefined;
      if (!grad)
        throw new Error(
          `pipeline rank ${rank}: output gradient of stage ${c.stage} micro-batch ${c.microBatch} not available`,
        );
      received.delete(`gradient:${next}`);
      inputGrads.delete(next);
    }
    const r = await splitBackwardAsync(f.loss ?? f.output, grad, f.input, deferW);
    if (c.stage > 0) inputGrads.set(key(c), r.inputGrad ?? f.input!.zerosLike());
    if (deferW) weightQueue.push(r);
  };

  const ops = s.ops[rank]!;
  const trace: PipelineStepResult['trace'] = [];
  for (let index = 0; index < ops.length; index++) {
    const op = ops[index]!;
    const start = op.kind === 'send' || op.kind === 'recv' ? 0 : performance.now();
    switch (op.kind) {
      case 'recv':
        received.set(msgKey(op.payload, op), await inbox.take(op.from, msgKey(op.payload, op)));
        break;
      case 'send': {
        const t = op.payload === 'activation' ? outputs.get(key(op)) : inputGrads.get(key(op));
        if (!t) throw new Error(`pipeline rank ${rank}: nothing to send for ${msgKey(op.payload, op)}`);
        (op.payload === 'activation' ? outputs : inputGrads).delete(key(op));
        sends.push(comm.send(t, op.to));
        break;
      }
      case 'F':
        await forward(op);
        break;
      case 'B':
        await backward(op, op.deferW);
        break;
      case 'FB':
        // The two chunks are on different stages (the schedule pairs opposite phases) and share no
        // parameters, received message or map entry, so only their collectives need separating.
        if (o.overlapForwardBackward ?? true)
          await runStreams([() => forward(op.forward), () => backward(op.backward, false)]);
        else {
          await forward(op.forward);
          await backward(op.backward, false);
        }
        break;
      case 'W': {
        const w = weightQueue.shift();
        if (!w) throw new Error(`pipeline rank ${rank}: W with no deferred backward`);
        w.weights();
        break;
      }
    }
    if (op.kind !== 'send' && op.kind !== 'recv')
      trace.push({ index, kind: op.kind, deferW: op.kind === 'B' && op.deferW, start, end: performance.now() });
  }
  await Promise.all(sends);
  const left = [...inbox.leftover, ...received.keys()];
  if (left.length || weightQueue.length)
    throw new Error(
      `pipeline rank ${rank}: step ended with unused messages ${left.join(', ')} or ${weightQueue.length} pending W`,
    );
  return { losses, trace };
}

/**
 * Sums the gradients of stages held by several ranks (DualPipe's two parameter copies) so every copy
 * ends with the gradient of the whole batch. Call after runPipelineStep on every rank.
 */
export async function syncReplicaGradients(
  s: Schedule,
  comm: PointToPoint,
  stages: ReadonlyMap<number, PipelineStage>,
): Promise<void> {
  const shared = s.rankStages[comm.rank]!.filter((st) => s.stageOwners[st]!.length > 1);
  const sends: Promise<void>[] = [];
  for (const st of shared) {
    for (const peer of s.stageOwners[st]!) {
      if (peer === comm.rank) continue;
      for (const p of stages.get(st)!.parameters()) sends.push(comm.send(p.grad ?? p.value.zerosLike(), peer));
    }
  }
  for (const st of shared) {
    const params = stages.get(st)!.parameters();
    const own = params.map((p) => p.grad ?? p.value.zerosLike());
    for (const peer of s.stageOwners[st]!) {
      if (peer === comm.rank) continue;
      for (let i = 0; i < params.length; i++) {
        const g = await comm.recv(peer);
        if (g.shape.join() !== own[i]!.shape.join())
          throw new Error(
            `pipeline: stage ${st} copies differ: parameter ${i} is [${own[i]!.shape.join(', ')}] here, [${g.shape.join(', ')}] on rank ${peer}`,
          );
        own[i] = own[i]!.add(g);
      }
    }
    params.forEach((p, i) => (p.grad = own[i]!));
  }
  await Promise.all(sends);
}
