// Emits one rank's operations: each compute op preceded by the receives it needs and followed by the
// sends of what it produced. Stages on the same rank hand over locally (no send/receive).
import type { Chunk, Phase, PipelineOp } from './types.js';

/** Which rank runs `stage` on `microBatch`. */
export type OwnerFn = (stage: number, microBatch: number) => number;

export class RankOpWriter {
  readonly ops: PipelineOp[] = [];
  /** Chunks whose weight gradients wait for a `W`, oldest first. */
  private readonly deferred: Chunk[] = [];

  constructor(
    readonly rank: number,
    private readonly stages: number,
    private readonly owner: OwnerFn,
  ) {}

  private recvInput(c: Chunk): void {
    if (c.stage === 0) return;
    const from = this.owner(c.stage - 1, c.microBatch);
    if (from !== this.rank)
      this.ops.push({ kind: 'recv', payload: 'activation', from, stage: c.stage - 1, microBatch: c.microBatch });
  }

  private sendOutput(c: Chunk): void {
    if (c.stage === this.stages - 1) return;
    const to = this.owner(c.stage + 1, c.microBatch);
    if (to !== this.rank)
      this.ops.push({ kind: 'send', payload: 'activation', to, stage: c.stage, microBatch: c.microBatch });
  }

  private recvOutputGrad(c: Chunk): void {
    if (c.stage === this.stages - 1) return;
    const from = this.owner(c.stage + 1, c.microBatch);
    if (from !== this.rank)
      this.ops.push({ kind: 'recv', payload: 'gradient', from, stage: c.stage + 1, microBatch: c.microBatch });
  }

  private sendInputGrad(c: Chunk): void {
    if (c.stage === 0) return;
    const to = this.owner(c.stage - 1, c.microBatch);
    if (to !== this.rank)
      this.ops.push({ kind: 'send', payload: 'gradient', to, stage: c.stage, microBatch: c.microBatch });
  }

  forward(phase: Phase, c: Chunk): void {
    this.recvInput(c);
    this.ops.push({ kind: 'F', phase, ...c });
    this.sendOutput(c);
  }

  backward(phase: Phase, c: Chunk, deferW: boolean): void {
    this.recvOutputGrad(c);
    this.ops.push({ kind: 'B', phase, deferW, ...c });
    if (deferW) this.deferred.push(c);
    this.sendInputGrad(c);
  }

  forwardBackward(forwardPhase: Phase, f: Chunk, backwardPhase: Phase, b: Chunk): void {
    this.recvInput(f);
    this.recvOutputGrad(b);
    this.ops.push({ kind: 'FB', forwardPhase, backwardPhase, forward: { ...f }, backward: { ...b } });
    this.sendOutput(f);
    this.sendInputGrad(b);
  }

  weight(): void {
    const c = this.deferred.shift();
    if (!c) throw new Error(`internal: rank ${this.rank} schedules a W with no deferred backward`);
    this.ops.push({ kind: 'W', ...c });
  }

  /** Deferred backwards still waiting for their W. */
  get pendingWeights(): number {
    return this.deferred.length;
  }
}
