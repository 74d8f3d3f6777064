// The router of disaggregated serving: an engine core (for the OpenAI front end's AsyncEngine) whose
// requests run on worker processes. Each request gets a decode worker (fewest requests routed there
// and queued, then most free cache blocks) and a prefill worker (shortest queue); the router opens the
// decode worker's output stream, asks the prefill worker to compute the prompt's latents and post them
// to that decode worker, and relays the decode stream. Control traffic is HTTP/JSON (fastify): few
// messages per request, human-debuggable, and the servers already speak it; only the latent pages,
// the bulk, go worker to worker as raw bytes. Workers register on the router's control port and are
// health-checked by polling their /status (which also reports their load).
import Fastify, { type FastifyInstance } from 'fastify';
import type { EngineCoreStats } from '../engine-core.js';
import { EngineCoreError } from '../engine-core.js';
import { EngineUnavailableError, type StepCore } from '../engine.js';
import { validateSamplingParams } from '../sampling.js';
import type { EngineRequest, RequestOutput } from '../sequence.js';
import type { PrefillReply } from './prefill-worker.js';
import { jsonLines, paramsToWire, type StreamLine, type WorkerRole, type WorkerStatus } from './wire.js';

export interface RouterOptions {
  /** How often workers are polled (default 1000 ms). */
  healthIntervalMs?: number;
  /**
   * How long one poll may take (default 30 000 ms): a worker answers between two steps, and one step of
   * a large model on a busy CPU can take seconds; a worker that is gone fails the poll at once.
   */
  healthTimeoutMs?: number;
  /** Polls missed in a row before a worker is dropped (default 3). */
  maxMissedPolls?: number;
  /** Prefill workers tried per request before it fails (default 3). */
  prefillAttempts?: number;
}

export interface WorkerEntry {
  role: WorkerRole;
  url: string;
  status: WorkerStatus;
  missed: number;
  /** requests the router has routed here that are not finished */
  assigned: number;
}

interface InFlight {
  req: EngineRequest;
  controller: AbortController;
  decode: string | null;
  prefill: string | null;
}

/** Thrown inside routing: the request fails with this message. */
class RouteError extends Error {}

export class RouterCore implements StepCore {
  readonly control: FastifyInstance;
  readonly workers = new Map<string, WorkerEntry>();
  private readonly inflight = new Map<string, InFlight>();
  private readonly outputs: RequestOutput[] = [];
  private wake: (() => void) | null = null;
  private readonly timer: NodeJS.Timeout;
  private readonly opts: Required<RouterOptions>;
  /** requests retried on another prefill worker, and requests failed, since start */
  prefillRetries = 0;
  failedRequests = 0;

  constructor(opts: RouterOptions = {}) {
    this.opts = { healthIntervalMs: 1000, healthTimeoutMs: 30_000, maxMissedPolls: 3, prefillAttempts: 3, ...opts };
    this.control = Fastify();
    this.control.post<{ Body: { role: WorkerRole; url: string } }>('/register', async (request, reply) => {
      const { role, url } = request.body ?? ({} as never);
      if ((role !== 'prefill' && role !== 'decode') || typeof url !== 'string')
        return reply.code(400).send({ error: 'expected {role: "prefill"|"decode", url}' });
      try {
        await this.register(role, url);
      } catch (e) {
        return reply.code(409).send({ error: e instanceof Error ? e.message : String(e) });
      }
      return { ok: true };
    });
    this.control.get('/workers', async () => [...this.workers.values()]);
    this.timer = setInterval(() => void this.poll(), this.opts.healthIntervalMs);
    this.timer.unref();
  }

  // ---- StepCore ----

  get maxModelLen(): number {
    let m = Infinity;
    for (const w of this.workers.values()) m = Math.min(m, w.status.maxModelLen);
    return Number.isFinite(m) ? m : 0;
  }
  get executor(): { vocabSize: number } {
    const first = this.workers.values().next();
    return { vocabSize: first.done ? 0 : first.value.status.vocabSize };
  }
  get hasWork(): boolean {
    return this.inflight.size > 0 || this.outputs.length > 0;
  }

  add(req: EngineRequest): void {
    if (this.inflight.has(req.id)) throw new EngineCoreError(`request id ${req.id} is already in the engine`);
    if (!this.count('prefill') || !this.count('decode'))
      throw new EngineUnavailableError(
        `no ${this.count('prefill') ? 'decode' : 'prefill'} worker is registered with the router`,
      );
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
    const f: InFlight = { req, controller: new AbortController(), decode: null, prefill: null };
    this.inflight.set(req.id, f);
    void this.route(f);
  }

  abort(id: string): void {
    const f = this.inflight.get(id);
    if (!f) return;
    this.inflight.delete(id);
    f.controller.abort();
    this.notify();
  }

  async step(): Promise<RequestOutput[]> {
    if (!this.outputs.length && this.inflight.size) await new Promise<void>((r) => (this.wake = r));
    return this.outputs.splice(0);
  }

  stats(): EngineCoreStats {
    const s: EngineCoreStats = {
      running: 0,
      waiting: 0,
      kvUsage: 0,
      freeBlocks: 0,
      totalBlocks: 0,
      prefixQueries: 0,
      prefixHits: 0,
      preemptions: 0,
      lastStepTokens: 0,
      speculative: { steps: 0, drafted: [], accepted: [] },
    };
    for (const w of this.workers.values()) {
      if (w.role !== 'decode') continue;
      s.running += w.status.running;
      s.waiting += w.status.waiting;
      s.freeBlocks += w.status.freeBlocks;
      s.totalBlocks += w.status.totalBlocks;
      const sp = w.status.speculative;
      if (!sp) continue;
      s.speculative.steps += sp.steps;
      sp.drafted.forEach((n, j) => (s.speculative.drafted[j] = (s.speculative.drafted[j] ?? 0) + n));
      sp.accepted.forEach((n, j) => (s.speculative.accepted[j] = (s.speculative.accepted[j] ?? 0) + n));
    }
    s.kvUsage = s.totalBlocks ? 1 - s.freeBlocks / s.totalBlocks : 0;
    return s;
  }

  // ---- workers ----

  count(role: WorkerRole): number {
    let n = 0;
    for (const w of this.workers.values()) if (w.role === role) n++;
    return n;
  }

  /** Resolves once at least `prefill` and `decode` workers are registered (rejects after timeoutMs). */
  async waitForWorkers(prefill: number, decode: number, timeoutMs = 120_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (this.count('prefill') < prefill || this.count('decode') < decode) {
      if (Date.now() > until)
        throw new Error(
          `timed out after ${timeoutMs} ms waiting for ${prefill} prefill and ${decode} decode workers (have ${this.count('prefill')} and ${this.count('decode')})`,
        );
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Adds (or refreshes) a worker after reading its status; refuses one whose model differs. */
  async register(role: WorkerRole, url: string): Promise<void> {
    const status = await this.fetchStatus(url);
    if (status.role !== role) throw new Error(`${url} says it is a ${status.role} worker, not ${role}`);
    for (const w of this.workers.values()) {
      if (
        w.url !== url &&
        (w.status.vocabSize !== status.vocabSize || w.status.bytesPerToken !== status.bytesPerToken)
      ) {
        throw new Error(
          `${url} serves a different model or MTP setting (vocabulary ${status.vocabSize}, ${status.bytesPerToken} page bytes per token) than ${w.url} (${w.status.vocabSize}, ${w.status.bytesPerToken}); prefill and decode workers must all use the same --mtp`,
        );
      }
    }
    const known = this.workers.get(url);
    if (known) {
      known.status = status;
      known.missed = 0;
    } else this.workers.set(url, { role, url, status, missed: 0, assigned: 0 });
  }

  /** Stops polling, fails what is in flight and closes the control server. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const id of [...this.inflight.keys()]) this.fail(id, 'the router is shutting down');
    await this.control.close();
  }

  private async fetchStatus(url: string): Promise<WorkerStatus> {
    const res = await fetch(`${url}/status`, { signal: AbortSignal.timeout(this.opts.healthTimeoutMs) });
    if (!res.ok) throw new Error(`${url}/status answered ${res.status}`);
    return (await res.json()) as WorkerStatus;
  }

  private polling = false;

  private async poll(): Promise<void> {
    // one poll at a time: a worker busy in a long step must not miss several checks at once
    if (this.polling) return;
    this.polling = true;
    try {
      await this.pollOnce();
    } finally {
      this.polling = false;
    }
  }

  private async pollOnce(): Promise<void> {
    await Promise.all(
      [...this.workers.values()].map(async (w) => {
        try {
          w.status = await this.fetchStatus(w.url);
          w.missed = 0;
        } catch {
          if (++w.missed >= this.opts.maxMissedPolls) this.drop(w.url, `missed ${w.missed} health checks`);
        }
      }),
    );
  }

  /** Forgets a worker; a decode worker's requests fail (their cache is gone with it). */
  private drop(url: string, why: string): void {
    const w = this.workers.get(url);
    if (!w) return;
    this.workers.delete(url);
    if (w.role !== 'decode') return;
    for (const [id, f] of this.inflight)
      if (f.decode === url) this.fail(id, `decode worker ${url} was lost (${why}); the request cannot continue`);
  }

  private pick(role: WorkerRole, exclude: ReadonlySet<string> = new Set()): WorkerEntry | null {
    let best: WorkerEntry | null = null;
    let bestScore = Infinity;
    for (const w of this.workers.values()) {
      if (w.role !== role || exclude.has(w.url)) continue;
      // queue first; among equal queues, the fuller cache loses
      const score = w.assigned + w.status.waiting + (1 - w.status.freeBlocks / Math.max(1, w.status.totalBlocks));
      if (score < bestScore) {
        best = w;
        bestScore = score;
      }
    }
    return best;
  }

  // ---- one request ----

  private async route(f: InFlight): Promise<void> {
    const id = f.req.id;
    const decode = this.pick('decode');
    if (!decode) return this.fail(id, 'no decode worker is available');
    f.decode = decode.url;
    decode.assigned++;
    try {
      let res: Response;
      try {
        res = await fetch(`${decode.url}/decode`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ id, promptIds: f.req.promptIds, params: paramsToWire(f.req.params) }),
          signal: f.controller.signal,
        });
      } catch (e) {
        if (!f.controller.signal.aborted) this.drop(decode.url, 'unreachable');
        return this.fail(id, `decode worker ${decode.url} is unreachable: ${message(e)}`);
      }
      if (!res.ok || !res.body)
        return this.fail(id, `decode worker ${decode.url} refused the request (${res.status}): ${await res.text()}`);
      // Node's web streams are async-iterable
      const relay = this.relay(f, decode.url, res.body as unknown as AsyncIterable<Uint8Array>);
      try {
        await this.prefill(f, decode.url);
      } catch (e) {
        this.fail(id, message(e));
      }
      await relay;
    } finally {
      decode.assigned--;
    }
  }

  /** Computes the prompt's latents on a prefill worker, trying another when one is lost. */
  private async prefill(f: InFlight, decodeUrl: string): Promise<void> {
    const tried = new Set<string>();
    const errors: string[] = [];
    for (let attempt = 0; attempt < this.opts.prefillAttempts; attempt++) {
      const p = this.pick('prefill', tried);
      if (!p) break;
      tried.add(p.url);
      f.prefill = p.url;
      p.assigned++;
      if (attempt > 0) this.prefillRetries++;
      try {
        const res = await fetch(`${p.url}/prefill`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            id: f.req.id,
            tokens: f.req.promptIds.slice(0, -1),
            next: f.req.promptIds.at(-1),
            decodeUrl,
          }),
          signal: f.controller.signal,
        });
        const body = (await res.json()) as PrefillReply;
        if (res.ok && body.ok) return;
        // the decode side or the request itself is at fault: another prefill worker would not help
        if (body.decodeFailed || res.status === 400)
          throw new RouteError(body.error ?? `prefill failed (${res.status})`);
        errors.push(`${p.url}: ${body.error ?? res.status}`);
      } catch (e) {
        if (e instanceof RouteError || f.controller.signal.aborted) throw e;
        // connection refused or reset: the worker is gone; never route to it again until it re-registers
        errors.push(`${p.url}: ${message(e)}`);
        this.drop(p.url, 'lost during a prefill');
      } finally {
        p.assigned--;
      }
    }
    throw new RouteError(
      `no prefill worker could compute the prompt (${errors.length ? errors.join('; ') : 'none available'})`,
    );
  }

  /** Relays the decode worker's stream into the outputs; a stream that breaks fails the request. */
  private async relay(f: InFlight, decodeUrl: string, body: AsyncIterable<Uint8Array>): Promise<void> {
    const id = f.req.id;
    let tokens = 0;
    try {
      for await (const line of jsonLines<StreamLine>(body)) {
        if ('error' in line) return this.fail(id, `decode worker ${decodeUrl}: ${line.error}`);
        tokens += line.newTokens.length;
        this.emit(line);
        if (line.finished) return;
      }
      this.fail(id, `decode worker ${decodeUrl} was lost mid-request (its stream ended after ${tokens} tokens)`);
    } catch (e) {
      this.fail(id, `decode worker ${decodeUrl} was lost mid-request after ${tokens} tokens: ${message(e)}`);
    }
  }

  private emit(o: RequestOutput): void {
    if (!this.inflight.has(o.id)) return;
    if (o.finished) this.inflight.delete(o.id);
    this.outputs.push(o);
    this.notify();
  }

  /** Ends a request with an error (no-op once it has ended). */
  private fail(id: string, error: string): void {
    const f = this.inflight.get(id);
    if (!f) return;
    this.failedRequests++;
    this.inflight.delete(id);
    f.controller.abort();
    this.outputs.push({
      id,
      newTokens: [],
      finished: 'abort',
      promptTokens: f.req.promptIds.length,
      cachedTokens: 0,
      error,
    });
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }
}

function message(e: unknown): string {
  if (e instanceof Error) return e.cause instanceof Error ? `${e.message} (${e.cause.message})` : e.message;
  return String(e);
}

/** Keeps a worker registered with the router (re-registering every intervalMs, e.g. after a router restart). */
export function keepRegistered(
  controlUrl: string,
  role: WorkerRole,
  selfUrl: string,
  intervalMs = 2000,
): { registered: Promise<void>; stop(): void } {
  let stopped = false;
  let first: (() => void) | null = null;
  const registered = new Promise<void>((r) => (first = r));
  const once = async (): Promise<void> => {
    try {
      const res = await fetch(`${controlUrl}/register`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ role, url: selfUrl }),
        signal: AbortSignal.timeout(5000),
      });
      if (res.ok) {
        first?.();
        first = null;
      } else process.stderr.write(`register with ${controlUrl} refused (${res.status}): ${await res.text()}\n`);
    } catch {
      // router not up yet or restarting: try again next time
    }
  };
  void once();
  const timer = setInterval(() => {
    if (!stopped) void once();
  }, intervalMs);
  timer.unref();
  return {
    registered,
    stop() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
