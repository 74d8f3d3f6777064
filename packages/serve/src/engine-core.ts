// The engine core: scheduler + block manager + executor, stepped by its owner. Only token ids,
// sampling parameters, aborts and per-step outputs cross its boundary, so it can live in another
// process (vLLM v1's split); the front end (engine.ts) does text, stop strings and streaming.
import { BlockManager } from './block-manager.js';
import type { Executor } from './executor.js';
import { Scheduler, type ScheduledChunk } from './scheduler.js';
import { Sequence, type EngineRequest, type FinishReason, type RequestOutput } from './sequence.js';
import { validateSamplingParams } from './sampling.js';

export interface EngineCoreOptions {
  maxBatchedTokens?: number;
  maxRunningSeqs?: number;
  /** Share cached prefix blocks across requests (default true). */
  prefixCaching?: boolean;
  /** End-of-sequence token ids (finish a request unless it sets ignoreEos). */
  eosTokenIds?: readonly number[];
  /** Longest prompt + generation a request may ask for (default: all the cache holds). */
  maxModelLen?: number;
  /** Sample only ids below this (the tokenizer's vocabulary, when the model's is padded past it). */
  vocabLimit?: number;
}

export interface EngineCoreStats {
  running: number;
  waiting: number;
  kvUsage: number;
  freeBlocks: number;
  totalBlocks: number;
  prefixQueries: number;
  prefixHits: number;
  preemptions: number;
  /** tokens fed to the model by the last step (prefill and decode) */
  lastStepTokens: number;
}

export class EngineCoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EngineCoreError';
  }
}

export class EngineCore {
  readonly scheduler: Scheduler;
  readonly blocks: BlockManager;
  readonly maxModelLen: number;
  private readonly eos: ReadonlySet<number>;
  private readonly vocabLimit: number;
  private readonly seqs = new Map<string, Sequence>();
  private readonly pendingAborts = new Set<string>();
  private stepping = false;
  private clock = 0;
  private lastStepTokens = 0;

  constructor(
    readonly executor: Executor,
    opts: EngineCoreOptions = {},
  ) {
    const cache = executor.cache;
    this.blocks = new BlockManager(cache, { prefixCaching: opts.prefixCaching ?? true, mainLayers: cache.numLayers - executor.numMtpModules });
    this.scheduler = new Scheduler(this.blocks, { maxBatchedTokens: opts.maxBatchedTokens ?? 512, maxRunningSeqs: opts.maxRunningSeqs ?? 64 });
    this.eos = new Set(opts.eosTokenIds ?? []);
    this.vocabLimit = Math.min(opts.vocabLimit ?? executor.vocabSize, executor.vocabSize);
    const capacity = cache.numBlocks * cache.blockSize;
    this.maxModelLen = Math.min(opts.maxModelLen ?? capacity, capacity);
  }

  get hasWork(): boolean {
    return this.scheduler.hasWork || this.pendingAborts.size > 0;
  }

  /** Queues a request (it runs from the next step). */
  add(req: EngineRequest): void {
    this.check(req);
    const seq = new Sequence(req, this.clock++);
    this.seqs.set(req.id, seq);
    this.scheduler.add(seq);
  }

  /**
   * Takes over a request whose first `computed` prompt tokens already have their latents in cache
   * sequence `cacheSeq` (allocated from this core's block manager; computed elsewhere, e.g. by a
   * disaggregated prefill). It runs from the next step like any running request.
   */
  adopt(req: EngineRequest, cacheSeq: number, computed: number): void {
    this.check(req);
    if (!(Number.isInteger(computed) && computed >= 0 && computed < req.promptIds.length)) throw new EngineCoreError(`adopt: ${computed} computed tokens must be fewer than the prompt's ${req.promptIds.length}`);
    const seq = new Sequence(req, this.clock++);
    seq.cacheSeq = cacheSeq;
    seq.computed = computed;
    seq.cachedTokens = 0;
    seq.status = 'running';
    this.seqs.set(req.id, seq);
    this.scheduler.running.push(seq);
  }

  private check(req: EngineRequest): void {
    if (this.seqs.has(req.id)) throw new EngineCoreError(`request id ${req.id} is already in the engine`);
    if (!req.promptIds.length) throw new EngineCoreError('the prompt is empty');
    const V = this.executor.vocabSize;
    for (const t of req.promptIds) if (!(Number.isInteger(t) && t >= 0 && t < V)) throw new EngineCoreError(`prompt token ${t} is outside the vocabulary [0, ${V})`);
    validateSamplingParams(req.params, V);
    if (req.promptIds.length + req.params.maxTokens > this.maxModelLen) {
      throw new EngineCoreError(`the prompt (${req.promptIds.length} tokens) plus max_tokens (${req.params.maxTokens}) exceeds the context of ${this.maxModelLen} tokens`);
    }
  }

  /** Aborts a request (idempotent); its blocks are freed at once, or right after a step in flight. */
  abort(id: string): void {
    if (!this.seqs.has(id)) return;
    this.pendingAborts.add(id);
    if (!this.stepping) this.applyAborts();
  }

  stats(): EngineCoreStats {
    return {
      running: this.scheduler.running.length,
      waiting: this.scheduler.waiting.length,
      kvUsage: this.blocks.usage,
      freeBlocks: this.blocks.availableBlocks,
      totalBlocks: this.blocks.totalBlocks,
      prefixQueries: this.blocks.queries,
      prefixHits: this.blocks.hits,
      preemptions: this.scheduler.numPreemptions,
      lastStepTokens: this.lastStepTokens,
    };
  }

  /** One scheduling step and one forward; returns what changed for each request it touched. */
  async step(): Promise<RequestOutput[]> {
    if (this.stepping) throw new EngineCoreError('step() is already running');
    this.stepping = true;
    const outputs: RequestOutput[] = [];
    try {
      outputs.push(...this.applyAborts());
      const { chunks } = this.scheduler.schedule();
      this.lastStepTokens = chunks.reduce((s, c) => s + c.count, 0);
      if (!chunks.length) {
        // Nothing fits although nothing runs: the head request can never get its blocks.
        const head = this.scheduler.waiting[0];
        if (head && !this.scheduler.running.length) outputs.push(this.finish(head, 'abort'));
        return outputs;
      }
      const logits = await this.executor.run(chunks.map((c) => ({ seq: c.seq.cacheSeq!, tokens: c.seq.tokens.slice(c.start, c.start + c.count) })));
      outputs.push(...this.update(chunks, logits));
      return outputs;
    } finally {
      this.stepping = false;
      if (this.pendingAborts.size) outputs.push(...this.applyAborts());
    }
  }

  private update(chunks: readonly ScheduledChunk[], logits: Float32Array): RequestOutput[] {
    const V = this.executor.vocabSize;
    const out: RequestOutput[] = [];
    chunks.forEach((c, i) => {
      const seq = c.seq;
      seq.computed += c.count;
      this.blocks.commit(seq.cacheSeq!, seq.tokens);
      if (!c.samples || seq.finish) return;
      const r = seq.sampler.sample(logits.subarray(i * V, i * V + this.vocabLimit));
      seq.tokens.push(r.token);
      const p = seq.params;
      const reason: FinishReason | null = p.stopTokenIds.includes(r.token) || (!p.ignoreEos && this.eos.has(r.token)) ? 'stop' : seq.outputLength >= p.maxTokens ? 'length' : null;
      const o = this.output(seq, [r.token], reason);
      if (r.logprob) o.logprobs = [r.logprob];
      if (reason) this.release(seq, reason);
      out.push(o);
    });
    return out;
  }

  private output(seq: Sequence, newTokens: number[], finished: FinishReason | null): RequestOutput {
    return { id: seq.id, newTokens, finished, promptTokens: seq.promptLength, cachedTokens: Math.max(0, seq.cachedTokens) };
  }

  private release(seq: Sequence, reason: FinishReason): void {
    seq.finish = reason;
    seq.status = 'finished';
    this.scheduler.remove(seq);
    this.seqs.delete(seq.id);
  }

  private finish(seq: Sequence, reason: FinishReason): RequestOutput {
    this.release(seq, reason);
    return this.output(seq, [], reason);
  }

  private applyAborts(): RequestOutput[] {
    const out: RequestOutput[] = [];
    for (const id of this.pendingAborts) {
      const seq = this.seqs.get(id);
      if (seq) out.push(this.finish(seq, 'abort'));
    }
    this.pendingAborts.clear();
    return out;
  }
}
