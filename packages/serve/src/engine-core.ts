// The engine core: scheduler + block manager + executor, stepped by its owner. Only token ids,
// sampling parameters, aborts and per-step outputs cross its boundary, so it can live in another
// process (vLLM v1's split); the front end (engine.ts) does text, stop strings and streaming.
import type { Tensor } from '@dsv3/core';
import { BlockManager } from './block-manager.js';
import type { DraftInput, Executor } from './executor.js';
import { Scheduler, type ScheduledChunk } from './scheduler.js';
import { Sequence, type EngineRequest, type FinishReason, type RequestOutput } from './sequence.js';
import { argmaxOnDevice, argmaxRows, StepPicks, type Picked, type StepRequest } from './device-sampling.js';
import { validateSamplingParams, type TokenLogprob } from './sampling.js';

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
  /**
   * MTP speculative decoding: draft this many tokens per step with the model's MTP module and verify
   * them in the main forward (0: off; 1: DeepSeek-V3's one module). Turns prefix caching off, since the
   * MTP layer's cache must cover every position the main layers hold.
   */
  speculativeTokens?: number;
  /**
   * With MTP drafting: run the MTP module before the step's picks are read, on the tokens still on the
   * device, so a step reads back once (default: on every backend but the CPU, where a read is no
   * pipeline drain and drafting after the read computes fewer MTP rows).
   */
  draftWithPicks?: boolean;
}

/** Speculative decoding counts: drafts proposed and accepted per draft position. */
export interface SpeculativeStats {
  steps: number;
  drafted: number[];
  accepted: number[];
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
  speculative: SpeculativeStats;
}

/** MTP drafts enqueued with a step's picks. */
interface Drafting {
  /** the candidate drafts, i32 (null when nothing was drafted on the device) */
  ids: Tensor | null;
  /** each sampling request drafted: its first candidate in ids, and its length before accepted drafts */
  drafted: { seq: Sequence; at: number; base: number }[];
  /** chunks (by index) whose requests are sampled on the host and drafted after the read */
  deferred: Set<number>;
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
  readonly speculativeTokens: number;
  private readonly draftWithPicks: boolean | undefined;
  private readonly spec: SpeculativeStats = { steps: 0, drafted: [], accepted: [] };

  constructor(
    readonly executor: Executor,
    opts: EngineCoreOptions = {},
  ) {
    const cache = executor.cache;
    const k = opts.speculativeTokens ?? 0;
    if (!(Number.isInteger(k) && k >= 0 && k <= 1))
      throw new EngineCoreError(
        `speculativeTokens must be 0 or 1 (one MTP module drafts one token per step), got ${k}`,
      );
    if (k > executor.numMtpModules)
      throw new EngineCoreError('speculative decoding needs an MTP module; the checkpoint has none');
    this.speculativeTokens = k;
    this.draftWithPicks = opts.draftWithPicks;
    this.blocks = new BlockManager(cache, {
      prefixCaching: k === 0 && (opts.prefixCaching ?? true),
      mainLayers: cache.numLayers - executor.numMtpModules,
    });
    this.scheduler = new Scheduler(this.blocks, {
      maxBatchedTokens: opts.maxBatchedTokens ?? 512,
      maxRunningSeqs: opts.maxRunningSeqs ?? 64,
      lookahead: k,
    });
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
    this.validate(req);
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
    this.validate(req);
    if (!(Number.isInteger(computed) && computed >= 0 && computed < req.promptIds.length))
      throw new EngineCoreError(
        `adopt: ${computed} computed tokens must be fewer than the prompt's ${req.promptIds.length}`,
      );
    const seq = new Sequence(req, this.clock++);
    seq.cacheSeq = cacheSeq;
    seq.computed = computed;
    seq.cachedTokens = 0;
    seq.status = 'running';
    this.seqs.set(req.id, seq);
    this.scheduler.running.push(seq);
  }

  /** Throws EngineCoreError (or SamplingError) for a request this core could never run. */
  validate(req: EngineRequest): void {
    if (this.seqs.has(req.id)) throw new EngineCoreError(`request id ${req.id} is already in the engine`);
    if (!req.promptIds.length) throw new EngineCoreError('the prompt is empty');
    const V = this.executor.vocabSize;
    for (const t of req.promptIds)
      if (!(Number.isInteger(t) && t >= 0 && t < V))
        throw new EngineCoreError(`prompt token ${t} is outside the vocabulary [0, ${V})`);
    validateSamplingParams(req.params, V);
    if (req.promptIds.length + req.params.maxTokens > this.maxModelLen) {
      throw new EngineCoreError(
        `the prompt (${req.promptIds.length} tokens) plus max_tokens (${req.params.maxTokens}) exceeds the context of ${this.maxModelLen} tokens`,
      );
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
      speculative: { steps: this.spec.steps, drafted: [...this.spec.drafted], accepted: [...this.spec.accepted] },
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
      // a decoding sequence feeds its last token followed by its draft; their logits verify the draft
      const drafts = chunks.map((c) => (c.samples ? c.seq.draft : []));
      const segments = chunks.map((c, i) => ({
        seq: c.seq.cacheSeq!,
        tokens: [...c.seq.tokens.slice(c.start, c.start + c.count), ...drafts[i]!],
        logitRows: 1 + drafts[i]!.length,
      }));
      const logits = await this.executor.run(segments);
      const requests = chunks.map((c, i) =>
        c.samples && !c.seq.finish ? { sampler: c.seq.sampler, draft: drafts[i]! } : null,
      );
      // the picks and (with MTP) the next drafts are enqueued, then read back together, once
      const picks = new StepPicks(logits, requests, this.vocabLimit);
      const lengths = segments.map((s) => s.tokens.length);
      const withPicks = this.draftWithPicks ?? logits.backend.name !== 'cpu';
      const drafting =
        this.speculativeTokens > 0
          ? withPicks
            ? await this.draftOnDevice(chunks, lengths, requests, picks)
            : { ids: null, drafted: [], deferred: new Set(chunks.keys()) }
          : null;
      const { picked, extra } = await picks.read(drafting?.ids ?? null);
      outputs.push(...this.update(chunks, picked));
      if (drafting) {
        for (const d of drafting.drafted)
          if (!d.seq.finish && d.seq.computed === d.seq.tokens.length - 1)
            d.seq.draft = [extra![d.at + d.seq.computed - d.base]!];
        if (drafting.deferred.size) await this.draftNext(chunks, lengths, drafting.deferred);
      }
      return outputs;
    } finally {
      this.stepping = false;
      if (this.pendingAborts.size) outputs.push(...this.applyAborts());
    }
  }

  private update(chunks: readonly ScheduledChunk[], picked: readonly (Picked | null)[]): RequestOutput[] {
    const out: RequestOutput[] = [];
    chunks.forEach((c, i) => {
      const seq = c.seq;
      const draft = seq.draft;
      const pick = picked[i];
      seq.computed += c.count;
      seq.draft = [];
      if (!pick) {
        this.blocks.commit(seq.cacheSeq!, seq.tokens);
        return;
      }
      const { emitted, accepted } = pick;
      if (draft.length) this.recordSpec(draft.length, accepted);
      // the cache keeps the fed token and the accepted drafts; rejected positions roll back
      seq.computed += accepted;
      if (accepted < draft.length) this.executor.truncate(seq.cacheSeq!, seq.computed);
      let reason: FinishReason | null = null;
      const tokens: number[] = [];
      const lps: TokenLogprob[] = [];
      const p = seq.params;
      for (const r of emitted) {
        seq.tokens.push(r.token);
        tokens.push(r.token);
        if (r.logprob) lps.push(r.logprob);
        reason =
          p.stopTokenIds.includes(r.token) || (!p.ignoreEos && this.eos.has(r.token))
            ? 'stop'
            : seq.outputLength >= p.maxTokens
              ? 'length'
              : null;
        if (reason) break;
      }
      this.blocks.commit(seq.cacheSeq!, seq.tokens);
      const o = this.output(seq, tokens, reason);
      if (lps.length) o.logprobs = lps;
      if (reason) this.release(seq, reason);
      out.push(o);
    });
    return out;
  }

  /**
   * The MTP module over every position this step fed (position i with its next token t_{i+1}; tokens
   * sampled this step are still on the device), enqueued before the picks are read: each sampling
   * request gets its draft for every number of drafts it may accept (its last 1 + K rows), all read
   * with the picks. Positions past what a request accepts roll back with the main layers' (truncate).
   * Requests sampled on the host (bias, penalties, min-p) are drafted after the read (draftNext), as
   * every request is when `draftWithPicks` is off.
   */
  private async draftOnDevice(
    chunks: readonly ScheduledChunk[],
    segmentLengths: readonly number[],
    requests: readonly (StepRequest | null)[],
    picks: StepPicks,
  ): Promise<Drafting> {
    const drafting: Drafting = { ids: null, drafted: [], deferred: new Set() };
    const inputs: DraftInput[] = [];
    const following: ({ request: number; position: number } | number)[] = [];
    let row = 0;
    let out = 0;
    chunks.forEach((c, i) => {
      const seq = c.seq;
      const fed = segmentLengths[i]!;
      const at = row;
      row += fed;
      if (seq.finish || seq.cacheSeq === null) return;
      const req = requests[i];
      if (req && !req.sampler.onDevice) {
        drafting.deferred.add(i);
        return;
      }
      // a sampling chunk ends at the sequence's last token: what follows its last 1 + K positions is sampled now
      const known = req ? c.count - 1 : c.count;
      following.push(...seq.tokens.slice(c.start + 1, c.start + 1 + known));
      for (let j = known; j < fed; j++) following.push({ request: i, position: j - known });
      const rows = req ? fed - known : 1;
      inputs.push({ seq: seq.cacheSeq, row: at, count: fed, logitRows: rows });
      if (req) drafting.drafted.push({ seq, at: out, base: c.start + c.count });
      out += rows;
    });
    if (inputs.length) {
      const logits = await this.executor.draft(inputs, picks.tokensOnDevice(following));
      drafting.ids = argmaxOnDevice(logits, this.vocabLimit);
    }
    return drafting;
  }

  /**
   * The MTP module consumes every position the main layers kept this step (position i with its next
   * token t_{i+1}), so its cache stays as long as theirs; its last row drafts the token after next.
   * (The chunks in `only`: all without draftWithPicks, else those whose tokens were sampled on the host.)
   */
  private async draftNext(
    chunks: readonly ScheduledChunk[],
    segmentLengths: readonly number[],
    only: ReadonlySet<number>,
  ): Promise<void> {
    const inputs: { seq: Sequence; input: DraftInput }[] = [];
    let row = 0;
    chunks.forEach((c, i) => {
      const seq = c.seq;
      const at = row;
      row += segmentLengths[i]!;
      if (!only.has(i) || seq.finish || seq.cacheSeq === null) return;
      const count = seq.computed - c.start;
      inputs.push({
        seq,
        input: { seq: seq.cacheSeq, row: at, count, tokens: seq.tokens.slice(c.start + 1, seq.computed + 1) },
      });
    });
    if (!inputs.length) return;
    const drafts = await argmaxRows(await this.executor.draft(inputs.map((x) => x.input)), this.vocabLimit);
    inputs.forEach((x, i) => {
      if (x.seq.computed === x.seq.tokens.length - 1) x.seq.draft = [drafts[i]!];
    });
  }

  private recordSpec(drafted: number, accepted: number): void {
    this.spec.steps++;
    for (let j = 0; j < drafted; j++) {
      this.spec.drafted[j] = (this.spec.drafted[j] ?? 0) + 1;
      if (j < accepted) this.spec.accepted[j] = (this.spec.accepted[j] ?? 0) + 1;
    }
  }

  private output(seq: Sequence, newTokens: number[], finished: FinishReason | null): RequestOutput {
    return {
      id: seq.id,
      newTokens,
      finished,
      promptTokens: seq.promptLength,
      cachedTokens: Math.max(0, seq.cachedTokens),
    };
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
