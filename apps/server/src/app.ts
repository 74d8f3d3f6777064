// The HTTP server (fastify): OpenAI's /v1/models, /v1/completions and /v1/chat/completions with SSE
// streaming, /health, /metrics and a chat page at /. Every error leaves in OpenAI's JSON shape.
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { z } from 'zod';
import {
  type ChatTemplate,
  EngineClosedError,
  EngineCoreError,
  EngineUnavailableError,
  RequestFailedError,
  QueueFullError,
  SamplingError,
  ChatTemplateError,
  type AsyncEngine,
  type GenerationChunk,
  type SamplingParams,
  type TextLogprob,
  type Usage,
} from '@dsv3/serve';
import { ApiError } from './errors.js';
import { RequestTimer, ServerMetrics } from './metrics.js';
import {
  chatRequest,
  completionRequest,
  describeZodError,
  messageText,
  stopStrings,
  toSamplingParams,
  type ChatRequest,
  type CompletionRequest,
} from './protocol.js';
import { chatPage } from './chat-page.js';
import { chatFormat, completionFormat, usageOf, type Format, type Job } from './formats.js';

export type ServerState = 'loading' | 'ready' | 'draining';

export interface ServerOptions {
  /** The name clients must send as `model`. */
  modelName: string;
  /** Require `Authorization: Bearer <apiKey>` on /v1/*. */
  apiKey?: string;
  /** Request bodies larger than this are refused with 413 (default 4 MiB). */
  bodyLimit?: number;
  logger?: boolean;
}

/** What the server serves once loaded. */
export interface Served {
  engine: AsyncEngine;
  chatTemplate: ChatTemplate | null;
}

export interface Server {
  app: FastifyInstance;
  metrics: ServerMetrics;
  readonly state: ServerState;
  /** The loaded engine and template (null while loading). */
  readonly served: Served | null;
  /** Makes the server ready with a loaded engine. */
  ready(served: Served): void;
  /** Stops accepting requests (503), waits for running ones, closes the listener. */
  drain(): Promise<void>;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

export function createServer(opts: ServerOptions): Server {
  let state: ServerState = 'loading';
  let served: Served | null = null;
  const app = Fastify({ logger: opts.logger ?? false, bodyLimit: opts.bodyLimit ?? 4 * 1024 * 1024 });
  const metrics = new ServerMetrics(() => served?.engine ?? null, opts.modelName);

  // JSON bodies must be valid UTF-8 and valid JSON; say which one failed.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body, done) => {
    let text: string;
    try {
      text = strictUtf8.decode(body as Buffer);
    } catch {
      done(new ApiError(400, 'the request body is not valid UTF-8'), undefined);
      return;
    }
    try {
      done(null, JSON.parse(text));
    } catch (e) {
      done(new ApiError(400, `the request body is not valid JSON: ${(e as Error).message}`), undefined);
    }
  });

  app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
    const e = toApiError(err);
    if (e.status >= 500) app.log.error(err);
    void reply.code(e.status).send(e.body());
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send(new ApiError(404, `no route ${req.method} ${req.url}`).body());
  });

  app.addHook('onRequest', async (req) => {
    if (!req.url.startsWith('/v1/')) return;
    if (opts.apiKey !== undefined) {
      const auth = req.headers.authorization ?? '';
      if (auth !== `Bearer ${opts.apiKey}`)
        throw new ApiError(
          401,
          auth ? 'the API key is not valid' : 'missing API key: send Authorization: Bearer <key>',
          'authentication_error',
          null,
          'invalid_api_key',
        );
    }
    if (state === 'loading') throw new ApiError(503, 'the model is still loading');
    if (state === 'draining') throw new ApiError(503, 'the server is shutting down');
  });

  app.get('/health', async (_req, reply) => {
    if (state !== 'ready') return reply.code(503).send({ status: state });
    return { status: 'ok' };
  });

  app.get('/metrics', async (_req, reply) => {
    void reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  app.get('/', async (_req, reply) => {
    void reply.header('content-type', 'text/html; charset=utf-8');
    return chatPage(opts.modelName);
  });

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [
      {
        id: opts.modelName,
        object: 'model',
        created: Math.floor(Date.now() / 1000),
        owned_by: 'dsv3',
        max_model_len: served!.engine.core.maxModelLen,
      },
    ],
  }));

  app.post('/v1/completions', async (req, reply) => {
    const body = parse(completionRequest, req.body);
    checkModel(body.model, opts.modelName);
    const engine = served!.engine;
    const prompts = completionPrompts(body.prompt, engine);
    const n = body.n ?? 1;
    const jobs: Job[] = [];
    prompts.forEach((ids, p) => {
      for (let c = 0; c < n; c++)
        jobs.push({
          index: p * n + c,
          promptIds: ids,
          params: params(body, ids, body.max_tokens ?? 16, body.logprobs ?? null, c, engine),
        });
    });
    return serve(req, reply, engine, jobs, stopStrings(body.stop), body, completionFormat(body.model));
  });

  app.post('/v1/chat/completions', async (req, reply) => {
    const body = parse(chatRequest, req.body);
    checkModel(body.model, opts.modelName);
    const engine = served!.engine;
    const template = served!.chatTemplate;
    if (!template) throw new ApiError(400, 'this model has no chat template; use /v1/completions');
    let text: string;
    try {
      text = template.render(
        body.messages.map((m) => ({ role: m.role, content: messageText(m) })),
        body.add_generation_prompt ?? true,
      );
    } catch (e) {
      throw new ApiError(400, (e as Error).message);
    }
    const ids = engine.tokenizer.encode(text, { addSpecialTokens: false });
    if (!ids.length) throw new ApiError(400, 'the rendered chat prompt is empty');
    const maxTokens =
      body.max_completion_tokens ?? body.max_tokens ?? Math.max(1, engine.core.maxModelLen - ids.length);
    const logprobs = body.logprobs ? (body.top_logprobs ?? 0) : null;
    const jobs: Job[] = Array.from({ length: body.n ?? 1 }, (_, c) => ({
      index: c,
      promptIds: ids,
      params: params(body, ids, maxTokens, logprobs, c, engine),
    }));
    return serve(
      req,
      reply,
      engine,
      jobs,
      stopStrings(body.stop),
      body,
      chatFormat(body.model, body.logprobs ?? false),
    );
  });

  function serve(
    _req: FastifyRequest,
    reply: FastifyReply,
    engine: AsyncEngine,
    jobs: Job[],
    stop: string[],
    body: CompletionRequest | ChatRequest,
    fmt: Format,
  ): Promise<unknown> {
    const controller = new AbortController();
    // A client that goes away aborts its requests (their blocks are freed at once).
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) controller.abort();
    });
    const streams = jobs.map((j) => {
      try {
        return engine.generate({ promptIds: j.promptIds, params: j.params, stop }, controller.signal);
      } catch (e) {
        controller.abort();
        throw e;
      }
    });
    const timers = jobs.map(() => new RequestTimer(metrics));
    const id = `${fmt.idPrefix}-${randomUUID().replaceAll('-', '')}`;
    const created = Math.floor(Date.now() / 1000);
    if (body.stream)
      return streamResponse(
        reply,
        jobs,
        streams,
        timers,
        fmt,
        id,
        created,
        body.stream_options?.include_usage ?? false,
        controller,
      );
    return collectResponse(jobs, streams, timers, fmt, id, created);
  }

  return {
    app,
    metrics,
    get state() {
      return state;
    },
    get served() {
      return served;
    },
    ready(s: Served) {
      served = s;
      state = 'ready';
    },
    async drain() {
      state = 'draining';
      await served?.engine.drain();
      await app.close();
    },
  };
}

function toApiError(err: Error & { statusCode?: number; code?: string }): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof QueueFullError) return new ApiError(429, err.message);
  if (err instanceof EngineClosedError || err instanceof EngineUnavailableError) return new ApiError(503, err.message);
  // the engine took the request but a worker holding it was lost: a bad gateway, not the client's fault
  if (err instanceof RequestFailedError) return new ApiError(502, err.message);
  if (err instanceof EngineCoreError || err instanceof SamplingError || err instanceof ChatTemplateError)
    return new ApiError(400, err.message);
  if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500)
    return new ApiError(err.statusCode, err.message, undefined, null, err.code ?? null);
  return new ApiError(500, `internal error: ${err.message}`);
}

function parse<T extends z.ZodType>(schema: T, body: unknown): z.infer<T> {
  if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body))
    throw new ApiError(400, 'the request body must be a JSON object');
  const r = schema.safeParse(body);
  if (!r.success) {
    const d = describeZodError(r.error);
    throw new ApiError(400, d.message, 'invalid_request_error', d.param);
  }
  return r.data;
}

function checkModel(model: string, served: string): void {
  if (model !== served)
    throw new ApiError(
      404,
      `the model \`${model}\` does not exist (this server serves \`${served}\`)`,
      'not_found_error',
      'model',
      'model_not_found',
    );
}

function completionPrompts(prompt: CompletionRequest['prompt'], engine: AsyncEngine): number[][] {
  const enc = (s: string): number[] => {
    const ids = engine.tokenizer.encode(s, { addSpecialTokens: true });
    if (!ids.length) throw new ApiError(400, 'the prompt is empty', 'invalid_request_error', 'prompt');
    return ids;
  };
  if (typeof prompt === 'string') return [enc(prompt)];
  if (prompt.length && typeof prompt[0] === 'number') return [prompt as number[]];
  return (prompt as (string | number[])[]).map((p) => (typeof p === 'string' ? enc(p) : p));
}

function params(
  body: CompletionRequest | ChatRequest,
  ids: number[],
  maxTokens: number,
  logprobs: number | null,
  choice: number,
  engine: AsyncEngine,
): SamplingParams {
  const limit = engine.core.maxModelLen;
  if (ids.length + maxTokens > limit) {
    throw new ApiError(
      400,
      `this model's context is ${limit} tokens; the prompt has ${ids.length} and max_tokens asks for ${maxTokens} more`,
      'invalid_request_error',
      'max_tokens',
      'context_length_exceeded',
    );
  }
  const V = engine.core.executor.vocabSize;
  for (const t of ids)
    if (t >= V)
      throw new ApiError(
        400,
        `prompt token ${t} is outside the vocabulary [0, ${V})`,
        'invalid_request_error',
        'prompt',
      );
  return toSamplingParams(body, maxTokens, logprobs, choice);
}

async function collectResponse(
  jobs: Job[],
  streams: AsyncIterableIterator<GenerationChunk>[],
  timers: RequestTimer[],
  fmt: Format,
  id: string,
  created: number,
): Promise<unknown> {
  const results = await Promise.all(
    streams.map(async (s, i) => {
      let text = '';
      const lps: TextLogprob[] = [];
      let finish = 'stop';
      let usage: Usage | undefined;
      for await (const c of s) {
        timers[i]!.tokens(c.tokenIds.length);
        text += c.text;
        if (c.logprobs) lps.push(...c.logprobs);
        if (c.finishReason) {
          finish = c.finishReason === 'abort' ? 'stop' : c.finishReason;
          usage = c.usage;
          timers[i]!.finish(c.finishReason, jobs[i]!.promptIds.length);
        }
      }
      return { text, lps, finish, usage };
    }),
  );
  return {
    id,
    object: fmt.object,
    created,
    model: fmt.model,
    choices: results.map((r, i) => fmt.choice(jobs[i]!.index, r.text, r.lps, r.finish)),
    usage: usageOf(
      jobs,
      results.map((r) => r.usage),
    ),
  };
}

async function streamResponse(
  reply: FastifyReply,
  jobs: Job[],
  streams: AsyncIterableIterator<GenerationChunk>[],
  timers: RequestTimer[],
  fmt: Format,
  id: string,
  created: number,
  includeUsage: boolean,
  controller: AbortController,
): Promise<void> {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  res.flushHeaders();
  const send = (obj: unknown): void => {
    if (!res.destroyed) res.write(`data: ${JSON.stringify(obj)}\n\n`);
  };
  const chunk = (choices: unknown[], extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    id,
    object: fmt.chunkObject,
    created,
    model: fmt.model,
    choices,
    ...extra,
  });
  const usage: (Usage | undefined)[] = jobs.map(() => undefined);
  try {
    await Promise.all(
      streams.map(async (s, i) => {
        let first = true;
        for await (const c of s) {
          if (controller.signal.aborted) break;
          timers[i]!.tokens(c.tokenIds.length);
          if (c.finishReason) {
            usage[i] = c.usage;
            timers[i]!.finish(c.finishReason, jobs[i]!.promptIds.length);
          }
          if (!c.text && !c.finishReason && !first) continue;
          send(chunk([fmt.delta(jobs[i]!.index, c, first)]));
          first = false;
        }
      }),
    );
    if (includeUsage) send(chunk([], { usage: usageOf(jobs, usage) }));
  } catch (e) {
    // a mid-stream failure is an error chunk, then the end marker
    send(toApiError(e as Error).body());
  }
  if (!res.destroyed) res.end('data: [DONE]\n\n');
}
