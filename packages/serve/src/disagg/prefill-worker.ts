// A prefill worker: POST /prefill {id, tokens, next, decodeUrl} computes the latents of `tokens` (the
// prompt without its last token `next`, which the decode worker feeds with its first decode step, so
// the sampler lives in one place) and posts them to the decode worker's /kv/:id. It answers the router
// once the pages are delivered; its engine meanwhile goes on with the next prompts.
import Fastify, { type FastifyInstance } from 'fastify';
import type { Executor } from '../executor.js';
import { PrefillEngine, type PrefillEngineOptions, type PrefilledPages } from './prefill-engine.js';
import { latentBytesPerToken, PAGE_CONTENT_TYPE, type WorkerStatus } from './wire.js';

export interface PrefillWorkerOptions extends PrefillEngineOptions {
  /** Longest prompt + completion the router may accept (default: the cache). */
  maxModelLen?: number;
  /** How long one page transfer may take (default 60 s). */
  transferTimeoutMs?: number;
}

/** The decode worker refused or lost the pages: the router fails the request (not a prefill fault). */
export interface PrefillReply {
  ok: boolean;
  bytes?: number;
  tokens?: number;
  error?: string;
  /** set when the failure is the decode worker's */
  decodeFailed?: boolean;
}

export class PrefillWorker {
  readonly engine: PrefillEngine;
  readonly app: FastifyInstance;
  private readonly maxModelLen: number;
  private readonly transferTimeoutMs: number;
  /** latent bytes sent since start */
  bytesSent = 0;
  /** prompts whose pages were delivered since start */
  handled = 0;

  constructor(
    readonly executor: Executor,
    opts: PrefillWorkerOptions = {},
  ) {
    this.engine = new PrefillEngine(executor, opts);
    const cache = executor.cache;
    this.maxModelLen = Math.min(
      opts.maxModelLen ?? cache.numBlocks * cache.blockSize,
      cache.numBlocks * cache.blockSize,
    );
    this.transferTimeoutMs = opts.transferTimeoutMs ?? 60_000;
    this.app = Fastify();
    this.routes();
  }

  status(): WorkerStatus {
    const cache = this.executor.cache;
    return {
      role: 'prefill',
      waiting: this.engine.waiting,
      running: this.engine.running,
      freeBlocks: this.engine.blocks.availableBlocks,
      totalBlocks: this.engine.blocks.totalBlocks,
      blockSize: cache.blockSize,
      vocabSize: this.executor.vocabSize,
      maxModelLen: this.maxModelLen,
      handled: this.handled,
      pageBytes: this.bytesSent,
      bytesPerToken: latentBytesPerToken(cache, this.engine.pageLayers),
    };
  }

  private routes(): void {
    const app = this.app;
    app.get('/health', async () => ({ ok: true }));
    app.get('/status', async () => this.status());
    app.post<{ Body: { id: string; tokens: number[]; next?: number; decodeUrl: string } }>(
      '/prefill',
      async (request, reply): Promise<PrefillReply> => {
        const { id, tokens, next, decodeUrl } = request.body ?? ({} as never);
        if (
          typeof id !== 'string' ||
          !Array.isArray(tokens) ||
          typeof decodeUrl !== 'string' ||
          (next !== undefined && typeof next !== 'number')
        ) {
          reply.code(400);
          return { ok: false, error: 'expected {id, tokens, next?, decodeUrl}' };
        }
        // the router gave up on this request: stop computing it
        reply.raw.on('close', () => {
          if (!reply.raw.writableFinished) this.engine.abort(id);
        });
        let pages: PrefilledPages;
        try {
          pages = await this.engine.prefill(id, tokens, next);
        } catch (e) {
          reply.code(e instanceof RangeError ? 400 : 500);
          return { ok: false, error: e instanceof Error ? e.message : String(e) };
        }
        try {
          const res = await fetch(`${decodeUrl}/kv/${encodeURIComponent(id)}`, {
            method: 'POST',
            headers: {
              'content-type': PAGE_CONTENT_TYPE,
              'x-tokens': String(pages.tokens),
              'x-layers': String(this.engine.pageLayers),
              'x-cache-dtype': this.executor.cache.dtype,
            },
            body: pages.pages,
            signal: AbortSignal.timeout(this.transferTimeoutMs),
          });
          if (!res.ok) {
            reply.code(502);
            return {
              ok: false,
              decodeFailed: true,
              error: `decode worker ${decodeUrl} refused the pages (${res.status}): ${await res.text()}`,
            };
          }
        } catch (e) {
          reply.code(502);
          return {
            ok: false,
            decodeFailed: true,
            error: `sending pages to decode worker ${decodeUrl} failed: ${e instanceof Error ? e.message : String(e)}`,
          };
        }
        this.bytesSent += pages.pages.byteLength;
        this.handled++;
        return { ok: true, bytes: pages.pages.byteLength, tokens: pages.tokens };
      },
    );
  }
}
