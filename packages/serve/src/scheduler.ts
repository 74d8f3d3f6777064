// Continuous batching without phases (as vLLM v1 schedules): every step brings each running sequence's
// cached tokens toward all its tokens under one token budget and a cap on running sequences, so a long
// prompt is prefilled in chunks next to the decodes. Running sequences go first, oldest first; when the
// cache runs out of blocks the newest running sequence is preempted (its blocks freed, recomputed later).
import type { BlockManager } from './block-manager.js';
import type { Sequence } from './sequence.js';

export interface SchedulerOptions {
  /** tokens fed to the model per step, all sequences together */
  maxBatchedTokens: number;
  /** sequences running at once */
  maxRunningSeqs: number;
  /** extra cache positions a running sequence may need per step (speculative drafts) */
  lookahead?: number;
}

export interface ScheduledChunk {
  seq: Sequence;
  /** the tokens fed this step: seq.tokens[start, start + count) */
  start: number;
  count: number;
  /** whether this chunk reaches the sequence's last token, so a new one is sampled */
  samples: boolean;
}

export interface SchedulerOutput {
  chunks: ScheduledChunk[];
  preempted: Sequence[];
}

export class Scheduler {
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];
  readonly opts: Required<SchedulerOptions>;
  numPreemptions = 0;

  constructor(
    readonly blocks: BlockManager,
    opts: SchedulerOptions,
  ) {
    if (!(Number.isInteger(opts.maxBatchedTokens) && opts.maxBatchedTokens >= 1))
      throw new RangeError(`maxBatchedTokens must be an integer >= 1, got ${opts.maxBatchedTokens}`);
    if (!(Number.isInteger(opts.maxRunningSeqs) && opts.maxRunningSeqs >= 1))
      throw new RangeError(`maxRunningSeqs must be an integer >= 1, got ${opts.maxRunningSeqs}`);
    this.opts = { lookahead: 0, ...opts };
  }

  add(seq: Sequence): void {
    this.waiting.push(seq);
  }

  get hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  /** Removes a sequence wherever it is and frees its blocks. */
  remove(seq: Sequence): void {
    const w = this.waiting.indexOf(seq);
    if (w >= 0) this.waiting.splice(w, 1);
    const r = this.running.indexOf(seq);
    if (r >= 0) this.running.splice(r, 1);
    this.release(seq);
  }

  release(seq: Sequence): void {
    if (seq.cacheSeq !== null) this.blocks.free(seq.cacheSeq);
    seq.cacheSeq = null;
  }

  private preempt(seq: Sequence): void {
    this.running.splice(this.running.indexOf(seq), 1);
    this.release(seq);
    seq.computed = 0;
    seq.draft = [];
    seq.status = 'waiting';
    seq.preemptions++;
    this.numPreemptions++;
    this.waiting.unshift(seq);
  }

  schedule(): SchedulerOutput {
    const chunks: ScheduledChunk[] = [];
    const preempted: Sequence[] = [];
    let budget = this.opts.maxBatchedTokens;
    let reserved = 0;
    const extra = this.opts.lookahead;
    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const seq = this.running[i]!;
      const count = Math.min(seq.pending, budget);
      const samples = count === seq.pending;
      const need = this.blocks.blocksNeeded(seq.cacheSeq, seq.computed + count + (samples ? extra : 0));
      let fits = this.blocks.reserve(reserved + need);
      while (!fits) {
        const victim = this.running[this.running.length - 1]!;
        this.preempt(victim);
        preempted.push(victim);
        if (victim === seq) break;
        fits = this.blocks.reserve(reserved + need);
      }
      if (!fits) break;
      chunks.push({ seq, start: seq.computed, count, samples });
      reserved += need;
      budget -= count;
    }
    if (preempted.length) return { chunks, preempted };
    while (this.waiting.length && this.running.length < this.opts.maxRunningSeqs && budget > 0) {
      const seq = this.waiting[0]!;
      const hit = this.blocks.lookup(seq.tokens);
      const cacheSeq = this.blocks.allocate(hit);
      const pending = seq.tokens.length - hit.tokens;
      const count = Math.min(pending, budget);
      const samples = count === pending;
      const need = this.blocks.blocksNeeded(cacheSeq, hit.tokens + count + (samples ? extra : 0));
      if (!this.blocks.reserve(reserved + need)) {
        this.blocks.free(cacheSeq);
        break;
      }
      this.waiting.shift();
      seq.cacheSeq = cacheSeq;
      seq.computed = hit.tokens;
      if (seq.cachedTokens < 0) {
        seq.cachedTokens = hit.tokens;
        this.blocks.recordQuery(seq.tokens.length, hit.tokens);
      }
      seq.status = 'running';
      this.running.push(seq);
      chunks.push({ seq, start: seq.computed, count, samples });
      reserved += need;
      budget -= count;
    }
    return { chunks, preempted };
  }
}
