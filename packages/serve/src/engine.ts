// The engine front end: a bounded queue in front of the engine core, a loop that steps the core while it
// has work, and per request an async stream of text deltas (incremental detokenization, stop strings
// that become aborts, logprobs with token text, usage at the end). Aborting the consumer (an
// AbortSignal, or leaving the for-await loop) aborts the request in the core and frees its blocks.
import { IncrementalDetokenizer, StopStringMatcher } from './detokenizer.js';
import type { EngineCoreStats } from './engine-core.js';
import type { SamplingParams, TokenLogprob } from './sampling.js';
import type { EngineRequest, FinishReason, RequestOutput } from './sequence.js';
import type { Tokenizer } from '@dsv3/model';

export interface GenerateRequest {
  promptIds: readonly number[];
  params: SamplingParams;
  /** Stop strings: the text ends before the first one generated. */
  stop?: readonly string[];
  skipSpecialTokens?: boolean;
}

export interface TextLogprob {
  token: number;
  text: string;
  logprob: number;
  top: { token: number; text: string; logprob: number }[];
}

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
}

export interface GenerationChunk {
  text: string;
  tokenIds: number[];
  logprobs?: TextLogprob[];
  /** set on the last chunk */
  finishReason: FinishReason | null;
  usage?: Usage;
}

export interface AsyncEngineOptions {
  /** Requests allowed to wait for a running slot; more are refused with QueueFullError. */
  maxQueue?: number;
}

export class QueueFullError extends Error {
  constructor(limit: number) {
    super(`the request queue is full (${limit} waiting); retry later`);
    this.name = 'QueueFullError';
  }
}

/**
 * What the front end needs of an engine core: the colocated EngineCore, or a router whose core runs
 * in other processes (disaggregated prefill/decode workers).
 */
export interface StepCore {
  readonly maxModelLen: number;
  readonly executor: { readonly vocabSize: number };
  readonly hasWork: boolean;
  add(req: EngineRequest): void;
  abort(id: string): void;
  step(): Promise<RequestOutput[]>;
  stats(): EngineCoreStats;
}

/** A request the engine could not finish (e.g. the worker holding it was lost); others go on. */
export class RequestFailedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RequestFailedError';
  }
}

/** The engine cannot take requests now (no worker registered, an expert-parallel rank lost); retry later. */
export class EngineUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EngineUnavailableError';
  }
}

export class EngineClosedError extends Error {
  constructor() {
    super('the engine is draining or stopped and accepts no new requests');
    this.name = 'EngineClosedError';
  }
}

/** A minimal async queue: the producer pushes, the consumer iterates. */
class Channel<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private waiter: ((r: IteratorResult<T>) => void) | null = null;
  private failWaiter: ((e: unknown) => void) | null = null;
  private closed = false;
  private error: unknown = null;
  constructor(private readonly onReturn: () => void) {}
  push(item: T): void {
    if (this.closed) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = this.failWaiter = null;
      w({ value: item, done: false });
    } else this.items.push(item);
  }
  close(error?: unknown): void {
    if (this.closed) return;
    this.closed = true;
    if (error !== undefined) this.error = error;
    if (this.waiter) {
      const w = this.waiter;
      const f = this.failWaiter!;
      this.waiter = this.failWaiter = null;
      if (error !== undefined) f(error);
      else w({ value: undefined, done: true });
    }
  }
  next(): Promise<IteratorResult<T>> {
    if (this.items.length) return Promise.resolve({ value: this.items.shift()!, done: false });
    if (this.closed)
      return this.error !== null ? Promise.reject(this.error) : Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiter = resolve;
      this.failWaiter = reject;
    });
  }
  return(): Promise<IteratorResult<T>> {
    if (!this.closed) this.onReturn();
    this.closed = true;
    this.items.length = 0;
    return Promise.resolve({ value: undefined, done: true });
  }
  [Symbol.asyncIterator](): this {
    return this;
  }
}

interface Active {
  channel: Channel<GenerationChunk>;
  detok: IncrementalDetokenizer;
  stops: StopStringMatcher;
  completionTokens: number;
  done: boolean;
  cleanup: () => void;
}

export class AsyncEngine {
  private readonly active = new Map<string, Active>();
  private nextId = 0;
  private loop: Promise<void> | null = null;
  private accepting = true;
  private readonly maxQueue: number;
  /** Called after every engine step (metrics). */
  onStep: ((stats: EngineCoreStats, seconds: number) => void) | null = null;

  constructor(
    readonly core: StepCore,
    readonly tokenizer: Tokenizer,
    opts: AsyncEngineOptions = {},
  ) {
    this.maxQueue = opts.maxQueue ?? 256;
  }

  get accepts(): boolean {
    return this.accepting;
  }
  /** Requests in the engine (running or waiting). */
  get inFlight(): number {
    return this.active.size;
  }

  /**
   * Starts a request and returns its stream. Throws QueueFullError when the queue is full,
   * EngineClosedError while draining, and the core's validation errors for bad requests.
   */
  generate(req: GenerateRequest, signal?: AbortSignal): AsyncIterableIterator<GenerationChunk> {
    if (!this.accepting) throw new EngineClosedError();
    if (this.core.stats().waiting >= this.maxQueue) throw new QueueFullError(this.maxQueue);
    if (signal?.aborted) throw signal.reason ?? new Error('aborted');
    const id = `req-${this.nextId++}`;
    const channel = new Channel<GenerationChunk>(() => this.abort(id));
    this.core.add({ id, promptIds: req.promptIds, params: req.params });
    const onAbort = (): void => this.abort(id);
    signal?.addEventListener('abort', onAbort, { once: true });
    this.active.set(id, {
      channel,
      detok: new IncrementalDetokenizer(this.tokenizer, req.skipSpecialTokens ?? true),
      stops: new StopStringMatcher(req.stop ?? []),
      completionTokens: 0,
      done: false,
      cleanup: () => signal?.removeEventListener('abort', onAbort),
    });
    this.kick();
    return channel;
  }

  /** Aborts a request: the core frees its blocks and the stream ends with finish reason 'abort'. */
  abort(id: string): void {
    const a = this.active.get(id);
    if (!a) return;
    this.core.abort(id);
    this.end(id, a, 'abort', '', { promptTokens: 0, completionTokens: a.completionTokens, cachedTokens: 0 });
  }

  /** Stops accepting requests and resolves once everything running or waiting has finished. */
  async drain(): Promise<void> {
    this.accepting = false;
    while (this.loop) await this.loop;
  }

  private kick(): void {
    if (this.loop) return;
    this.loop = this.run().finally(() => {
      this.loop = null;
      if (this.core.hasWork) this.kick();
    });
  }

  private async run(): Promise<void> {
    while (this.core.hasWork) {
      const t0 = performance.now();
      let outputs: RequestOutput[];
      try {
        outputs = await this.core.step();
      } catch (e) {
        // A failed step fails the requests it held; the engine keeps serving the next ones.
        for (const id of [...this.active.keys()]) this.fail(id, e);
        continue;
      }
      for (const o of outputs) {
        try {
          this.deliver(o);
        } catch (e) {
          // a request whose output cannot be processed fails alone
          this.fail(o.id, e);
        }
      }
      this.onStep?.(this.core.stats(), (performance.now() - t0) / 1000);
      // let the event loop serve sockets between steps
      await new Promise((r) => setImmediate(r));
    }
  }

  private fail(id: string, e: unknown): void {
    const a = this.active.get(id);
    this.core.abort(id);
    if (!a) return;
    this.active.delete(id);
    a.done = true;
    a.cleanup();
    a.channel.close(e instanceof Error ? e : new Error(String(e)));
  }

  private deliver(o: RequestOutput): void {
    const a = this.active.get(o.id);
    if (!a || a.done) return;
    if (o.error !== undefined) {
      a.done = true;
      this.active.delete(o.id);
      a.cleanup();
      a.channel.close(new RequestFailedError(o.error));
      return;
    }
    a.completionTokens += o.newTokens.length;
    const final = o.finished !== null;
    const delta = a.detok.push(o.newTokens) + (final ? a.detok.flush() : '');
    const m = a.stops.push(delta, final);
    const usage = (): Usage => ({
      promptTokens: o.promptTokens,
      completionTokens: a.completionTokens,
      cachedTokens: o.cachedTokens,
    });
    const logprobs = o.logprobs && this.textLogprobs(o.logprobs);
    if (m.stopped) {
      this.core.abort(o.id);
      this.end(o.id, a, 'stop', m.emit, usage(), o.newTokens, logprobs);
      return;
    }
    if (final) {
      this.end(o.id, a, o.finished!, m.emit, usage(), o.newTokens, logprobs);
      return;
    }
    a.channel.push({ text: m.emit, tokenIds: o.newTokens, ...(logprobs && { logprobs }), finishReason: null });
  }

  private end(
    id: string,
    a: Active,
    reason: FinishReason,
    text: string,
    usage: Usage,
    tokenIds: number[] = [],
    logprobs?: TextLogprob[],
  ): void {
    a.done = true;
    this.active.delete(id);
    a.cleanup();
    a.channel.push({ text, tokenIds, ...(logprobs && { logprobs }), finishReason: reason, usage });
    a.channel.close();
  }

  private textLogprobs(lps: readonly TokenLogprob[]): TextLogprob[] {
    const text = (t: number): string => this.tokenizer.decode([t], { skipSpecialTokens: false });
    return lps.map((l) => ({
      token: l.token,
      text: text(l.token),
      logprob: l.logprob,
      top: l.top.map((t) => ({ token: t.token, text: text(t.token), logprob: t.logprob })),
    }));
  }
}
