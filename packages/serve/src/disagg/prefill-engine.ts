// The prefill side of disaggregated serving: the scheduler and block manager of the colocated engine
// over prompts only. A prompt's latents are computed in chunks under the step's token budget (prefix
// cache included); once its last chunk ran, its pages are read out and its blocks released, so the
// engine goes on with the next prompts while the pages travel to a decode worker. For a decode worker
// that drafts with MTP, the MTP module also runs over every prompt position (its input at position i is
// the main model's hidden state there and token i + 1, all known from the prompt), and its cache layer
// travels with the main layers' pages: the decode worker then drafts from its first step on, exactly as
// the colocated engine does.
import { BlockManager } from '../block-manager.js';
import type { DraftInput, Executor } from '../executor.js';
import { defaultSamplingParams } from '../sampling.js';
import { Scheduler } from '../scheduler.js';
import { Sequence } from '../sequence.js';
import { packPages } from './wire.js';

export interface PrefillEngineOptions {
  maxBatchedTokens?: number;
  maxRunningSeqs?: number;
  prefixCaching?: boolean;
  /**
   * Compute and ship the MTP module's cache layer too (for decode workers that draft with MTP: 1;
   * default 0). Turns prefix caching off, as in the colocated engine.
   */
  speculativeTokens?: number;
}

export interface PrefilledPages {
  /** tokens whose latents the pages hold */
  tokens: number;
  /** packed latents of the shipped layers (see wire.ts) */
  pages: Uint8Array<ArrayBuffer>;
}

export class PrefillAbortedError extends Error {
  constructor(id: string) {
    super(`prefill of request ${id} was aborted`);
    this.name = 'PrefillAbortedError';
  }
}

interface Pending {
  seq: Sequence;
  /** the token after the last one prefilled (the MTP module's input at the last position) */
  next: number | null;
  resolve: (p: PrefilledPages) => void;
  reject: (e: Error) => void;
}

export class PrefillEngine {
  readonly blocks: BlockManager;
  readonly scheduler: Scheduler;
  readonly mainLayers: number;
  /** cache layers shipped: the main layers, plus the MTP module's with speculative decoding */
  readonly pageLayers: number;
  readonly speculative: boolean;
  private readonly pending = new Map<string, Pending>();
  private loop: Promise<void> | null = null;
  /** aborts that arrived during a forward (applied right after it: the forward writes their blocks) */
  private readonly lateAborts = new Set<string>();
  private stepping = false;
  /** prompt tokens computed (not found in the prefix cache) since start */
  computedTokens = 0;

  constructor(
    readonly executor: Executor,
    opts: PrefillEngineOptions = {},
  ) {
    this.mainLayers = executor.cache.numLayers - executor.numMtpModules;
    const k = opts.speculativeTokens ?? 0;
    if (!(k === 0 || k === 1)) throw new RangeError(`speculativeTokens must be 0 or 1, got ${k}`);
    if (k > executor.numMtpModules)
      throw new RangeError('speculative decoding needs an MTP module; the checkpoint has none');
    this.speculative = k > 0;
    this.pageLayers = this.speculative ? this.mainLayers + 1 : this.mainLayers;
    this.blocks = new BlockManager(executor.cache, {
      prefixCaching: !this.speculative && (opts.prefixCaching ?? true),
      mainLayers: this.mainLayers,
    });
    this.scheduler = new Scheduler(this.blocks, {
      maxBatchedTokens: opts.maxBatchedTokens ?? 512,
      maxRunningSeqs: opts.maxRunningSeqs ?? 64,
    });
  }

  get waiting(): number {
    return this.scheduler.waiting.length;
  }
  get running(): number {
    return this.scheduler.running.length;
  }

  /**
   * Computes the latents of `tokens` (a prompt without its last token) and returns them packed;
   * `next` is the prompt's last token (needed to run the MTP module at the last position).
   */
  prefill(id: string, tokens: readonly number[], next?: number): Promise<PrefilledPages> {
    if (this.pending.has(id)) return Promise.reject(new Error(`request id ${id} is already being prefilled`));
    const V = this.executor.vocabSize;
    if (this.speculative && next === undefined)
      return Promise.reject(
        new RangeError("this prefill worker computes the MTP module's cache too: it needs the prompt's last token"),
      );
    for (const t of next === undefined ? tokens : [...tokens, next])
      if (!(Number.isInteger(t) && t >= 0 && t < V))
        return Promise.reject(new RangeError(`prompt token ${t} is outside the vocabulary [0, ${V})`));
    if (tokens.length > this.blocks.totalBlocks * this.blocks.blockSize)
      return Promise.reject(
        new RangeError(
          `a prompt of ${tokens.length} tokens does not fit this worker's cache of ${this.blocks.totalBlocks * this.blocks.blockSize} tokens`,
        ),
      );
    if (!tokens.length) return Promise.resolve({ tokens: 0, pages: new Uint8Array(0) });
    return new Promise((resolve, reject) => {
      const seq = new Sequence(
        { id, promptIds: tokens, params: { ...defaultSamplingParams, temperature: 0, seed: 0, maxTokens: 1 } },
        0,
      );
      this.pending.set(id, { seq, next: next ?? null, resolve, reject });
      this.scheduler.add(seq);
      this.kick();
    });
  }

  /** Drops a prompt (its blocks are freed); its promise rejects with PrefillAbortedError. */
  abort(id: string): void {
    const p = this.pending.get(id);
    if (!p) return;
    if (this.stepping) {
      this.lateAborts.add(id);
      return;
    }
    this.pending.delete(id);
    this.scheduler.remove(p.seq);
    p.reject(new PrefillAbortedError(id));
  }

  private kick(): void {
    if (this.loop) return;
    this.loop = this.run().finally(() => {
      this.loop = null;
      if (this.scheduler.hasWork) this.kick();
    });
  }

  private async run(): Promise<void> {
    while (this.scheduler.hasWork) {
      for (const id of this.lateAborts) this.abort(id);
      this.lateAborts.clear();
      if (!this.scheduler.hasWork) break;
      const { chunks } = this.scheduler.schedule();
      if (!chunks.length) {
        const head = this.scheduler.waiting[0];
        if (head && !this.scheduler.running.length)
          this.fail(head, new RangeError(`request ${head.id}: the prompt does not fit the prefill cache`));
        continue;
      }
      this.stepping = true;
      try {
        await this.executor.run(
          chunks.map((c) => ({ seq: c.seq.cacheSeq!, tokens: c.seq.tokens.slice(c.start, c.start + c.count) })),
        );
        if (this.speculative) await this.executor.draft(this.draftInputs(chunks));
      } catch (e) {
        for (const c of chunks) this.fail(c.seq, e instanceof Error ? e : new Error(String(e)));
        continue;
      } finally {
        this.stepping = false;
      }
      for (const c of chunks) {
        if (this.lateAborts.has(c.seq.id)) continue;
        const seq = c.seq;
        seq.computed += c.count;
        this.computedTokens += c.count;
        this.blocks.commit(seq.cacheSeq!, seq.tokens);
        if (!c.samples) continue;
        const p = this.pending.get(seq.id);
        const pages = await packPages(this.executor.cache, seq.cacheSeq!, this.pageLayers, seq.tokens.length);
        this.pending.delete(seq.id);
        this.scheduler.remove(seq);
        p?.resolve({ tokens: seq.tokens.length, pages });
      }
      for (const id of this.lateAborts) this.abort(id);
      this.lateAborts.clear();
      // let sockets (page transfers, new prompts) move between steps
      await new Promise((r) => setImmediate(r));
    }
  }

  /** The MTP module over every position the step computed: position i with token i + 1. */
  private draftInputs(chunks: readonly { seq: Sequence; start: number; count: number }[]): DraftInput[] {
    let row = 0;
    return chunks.map((c) => {
      const next = this.pending.get(c.seq.id)?.next ?? 0;
      const following = [...c.seq.tokens.slice(c.start + 1, c.start + c.count + 1)];
      if (following.length < c.count) following.push(next);
      const input = { seq: c.seq.cacheSeq!, row, count: c.count, tokens: following };
      row += c.count;
      return input;
    });
  }

  private fail(seq: Sequence, e: Error): void {
    const p = this.pending.get(seq.id);
    this.pending.delete(seq.id);
    this.scheduler.remove(seq);
    p?.reject(e);
  }
}
