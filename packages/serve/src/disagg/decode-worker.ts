// A decode worker: a colocated engine core whose requests arrive with their prompt's latents computed
// elsewhere. The router opens POST /decode (the request; the response streams its outputs as JSON
// lines); a prefill worker delivers the pages with POST /kv/:id; the worker adopts the request into
// its running batch once the cache has room, feeds the prompt's last token and decodes from there.
import Fastify, { type FastifyInstance } from 'fastify';
import type { ServerResponse } from 'node:http';
import { EngineCore, type EngineCoreOptions } from '../engine-core.js';
import type { Executor } from '../executor.js';
import type { EngineRequest, RequestOutput } from '../sequence.js';
import {
  latentBytesPerToken,
  PAGE_CONTENT_TYPE,
  paramsFromWire,
  unpackPages,
  type StreamLine,
  type WireParams,
  type WorkerStatus,
} from './wire.js';

export interface DecodeWorkerOptions extends EngineCoreOptions {
  /** How long a request waits for its pages before it fails (default 120 s). */
  pagesTimeoutMs?: number;
}

interface Awaiting {
  req: EngineRequest;
  out: ServerResponse;
  timer: NodeJS.Timeout;
  /** pages received, waiting for cache room */
  pages?: { tokens: number; body: Buffer };
  adopted: boolean;
}

export class DecodeWorker {
  readonly core: EngineCore;
  readonly app: FastifyInstance;
  private readonly requests = new Map<string, Awaiting>();
  /** ids whose pages arrived, in arrival order */
  private readonly admitQueue: string[] = [];
  private loop: Promise<void> | null = null;
  private readonly mainLayers: number;
  private readonly pageLayers: number;
  private readonly pagesTimeoutMs: number;
  /** latent bytes received since start */
  bytesReceived = 0;
  /** requests adopted since start */
  adopted = 0;

  constructor(executor: Executor, opts: DecodeWorkerOptions = {}) {
    this.core = new EngineCore(executor, opts);
    this.mainLayers = executor.cache.numLayers - executor.numMtpModules;
    // drafting with MTP, the pages carry the MTP module's cache layer too (its hidden state over the prompt)
    this.pageLayers = this.core.speculativeTokens ? this.mainLayers + 1 : this.mainLayers;
    this.pagesTimeoutMs = opts.pagesTimeoutMs ?? 120_000;
    this.app = Fastify({ bodyLimit: 1 << 30 });
    this.app.addContentTypeParser(PAGE_CONTENT_TYPE, { parseAs: 'buffer', bodyLimit: 1 << 30 }, (_req, body, done) =>
      done(null, body),
    );
    this.routes();
  }

  status(): WorkerStatus {
    const s = this.core.stats();
    const cache = this.core.executor.cache;
    return {
      role: 'decode',
      waiting: s.waiting + this.requests.size - this.adoptedCount(),
      running: s.running,
      freeBlocks: s.freeBlocks,
      totalBlocks: s.totalBlocks,
      blockSize: cache.blockSize,
      vocabSize: this.core.executor.vocabSize,
      maxModelLen: this.core.maxModelLen,
      handled: this.adopted,
      pageBytes: this.bytesReceived,
      bytesPerToken: latentBytesPerToken(cache, this.pageLayers),
      speculative: s.speculative,
    };
  }

  /** Requests this worker holds (waiting for pages, for room, or running). */
  get inFlight(): number {
    return this.requests.size;
  }

  private adoptedCount(): number {
    let n = 0;
    for (const a of this.requests.values()) if (a.adopted) n++;
    return n;
  }

  private routes(): void {
    const app = this.app;
    app.get('/health', async () => ({ ok: true }));
    app.get('/status', async () => this.status());
    app.post<{ Body: { id: string; promptIds: number[]; params: WireParams } }>('/decode', async (request, reply) => {
      const { id, promptIds, params } = request.body ?? ({} as never);
      if (typeof id !== 'string' || !Array.isArray(promptIds) || typeof params !== 'object')
        return reply.code(400).send({ error: 'expected {id, promptIds, params}' });
      if (this.requests.has(id)) return reply.code(409).send({ error: `request ${id} is already on this worker` });
      const req: EngineRequest = { id, promptIds, params: paramsFromWire(params) };
      reply.hijack();
      const out = reply.raw;
      out.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' });
      // the router starts the prefill once it sees the headers
      out.flushHeaders();
      const timer = setTimeout(
        () => this.fail(id, `no latent pages arrived within ${this.pagesTimeoutMs} ms`),
        this.pagesTimeoutMs,
      );
      this.requests.set(id, { req, out, timer, adopted: false });
      // the router went away (client gone, router down): drop the request and its blocks
      out.on('close', () => {
        if (!out.writableFinished) this.drop(id);
      });
    });
    app.post<{ Params: { id: string }; Body: Buffer }>('/kv/:id', async (request, reply) => {
      const a = this.requests.get(request.params.id);
      if (!a)
        return reply
          .code(404)
          .send({ error: `request ${request.params.id} is not waiting on this worker (aborted or timed out)` });
      // a retried prefill whose first attempt delivered before its worker was lost: same pages, keep the first
      if (a.pages || a.adopted) return { ok: true, duplicate: true };
      const tokens = Number(request.headers['x-tokens']);
      const cache = this.core.executor.cache;
      const expected = tokens * latentBytesPerToken(cache, this.pageLayers);
      const layers = request.headers['x-layers'];
      if (layers !== undefined && Number(layers) !== this.pageLayers)
        return reply.code(400).send({
          error: `pages of ${String(layers)} cache layers; this worker takes ${this.pageLayers} (${this.core.speculativeTokens ? "the main layers and the MTP module's" : 'the main layers'})`,
        });
      if (!Number.isInteger(tokens) || tokens !== a.req.promptIds.length - 1)
        return reply.code(400).send({
          error: `x-tokens must be the prompt length minus one (${a.req.promptIds.length - 1}), got ${request.headers['x-tokens']}`,
        });
      if (request.headers['x-cache-dtype'] !== cache.dtype)
        return reply.code(400).send({
          error: `pages are ${String(request.headers['x-cache-dtype'])}, this worker's cache is ${cache.dtype}`,
        });
      const body = request.body;
      if (!Buffer.isBuffer(body) || body.byteLength !== expected)
        return reply.code(400).send({
          error: `expected ${expected} bytes of latent pages for ${tokens} tokens, got ${Buffer.isBuffer(body) ? body.byteLength : 'no body'}`,
        });
      clearTimeout(a.timer);
      a.pages = { tokens, body };
      this.bytesReceived += body.byteLength;
      this.admitQueue.push(request.params.id);
      this.kick();
      return { ok: true, bytes: body.byteLength };
    });
  }

  private kick(): void {
    if (this.loop) return;
    this.loop = this.run().finally(() => {
      this.loop = null;
      if (this.core.hasWork || this.admitQueue.length) this.kick();
    });
  }

  private async run(): Promise<void> {
    while (this.core.hasWork || this.admitQueue.length) {
      this.admit();
      if (!this.core.hasWork) break;
      let outputs: RequestOutput[];
      try {
        outputs = await this.core.step();
      } catch (e) {
        const why = `decode step failed: ${e instanceof Error ? e.message : String(e)}`;
        for (const [id, a] of this.requests) if (a.adopted) this.fail(id, why);
        continue;
      }
      for (const o of outputs) this.deliver(o);
      await new Promise((r) => setImmediate(r));
    }
  }

  /** Moves requests whose pages arrived into the running batch, oldest first, while blocks last. */
  private admit(): void {
    const cache = this.core.executor.cache;
    while (this.admitQueue.length) {
      const id = this.admitQueue[0]!;
      const a = this.requests.get(id);
      if (!a?.pages) {
        this.admitQueue.shift();
        continue;
      }
      // the pages plus room for the prompt's last token (and its draft)
      const need = Math.ceil((a.pages.tokens + 1 + this.core.speculativeTokens) / cache.blockSize);
      if (!this.core.blocks.reserve(need)) {
        if (this.core.stats().running > 0) return; // room comes back as running requests finish
        this.admitQueue.shift();
        this.fail(id, `the prompt's ${a.pages.tokens + 1} tokens do not fit this decode worker's free cache`);
        continue;
      }
      this.admitQueue.shift();
      const seq = this.core.blocks.allocateEmpty();
      try {
        unpackPages(cache, seq, this.pageLayers, a.pages.tokens, a.pages.body);
        this.core.adopt(a.req, seq, a.pages.tokens);
      } catch (e) {
        this.core.blocks.free(seq);
        this.fail(id, e instanceof Error ? e.message : String(e));
        continue;
      }
      a.pages = undefined;
      a.adopted = true;
      this.adopted++;
    }
  }

  private deliver(o: RequestOutput): void {
    const a = this.requests.get(o.id);
    if (!a) return;
    this.write(a, o);
    if (o.finished) {
      this.requests.delete(o.id);
      a.out.end();
    }
  }

  private write(a: Awaiting, line: StreamLine): void {
    if (!a.out.destroyed) a.out.write(`${JSON.stringify(line)}\n`);
  }

  /** Ends a request with an error line (its blocks are freed). */
  private fail(id: string, error: string): void {
    const a = this.requests.get(id);
    if (!a) return;
    this.drop(id);
    this.write(a, { id, error });
    a.out.end();
  }

  /** Forgets a request and frees whatever it holds. */
  private drop(id: string): void {
    const a = this.requests.get(id);
    if (!a) return;
    clearTimeout(a.timer);
    this.requests.delete(id);
    if (a.adopted) this.core.abort(id);
  }
}
