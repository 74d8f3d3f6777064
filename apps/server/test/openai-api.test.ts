// The OpenAI-compatible API driven by the official `openai` client: models, completions, chat,
// streaming (pieces concatenate to the non-streamed text under greedy decoding), usage, stop, n,
// logprobs, and every error status.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import { generate, loadModel } from '@dsv3/model';
import { AsyncEngine, EngineCore, ModelExecutor, type Executor } from '@dsv3/serve';
import { tinyTokenizer } from '../../../packages/serve/test/tokenizer.js';
import { createServer } from '../src/index.js';
import { MODEL, post, startServer, tinyDir, type Running } from './helpers.js';

const tok = tinyTokenizer();
let s: Running;
beforeAll(async () => {
  s = await startServer();
}, 60_000);
afterAll(async () => s?.close());

async function streamText(
  stream: AsyncIterable<OpenAI.Completions.Completion>,
): Promise<{ text: string; finish: string | null; chunks: number }> {
  let text = '';
  let finish: string | null = null;
  let chunks = 0;
  for await (const c of stream) {
    chunks++;
    for (const ch of c.choices) {
      text += ch.text;
      finish = ch.finish_reason ?? finish;
    }
  }
  return { text, finish, chunks };
}

describe('OpenAI API over tiny-v3', () => {
  it('lists the served model', async () => {
    const models = await s.client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);
  });

  it('greedy completion equals @dsv3/model generate, and streaming concatenates to it', async () => {
    const prompt = 'The latent cache';
    const full = await s.client.completions.create({ model: MODEL, prompt, max_tokens: 20, temperature: 0 });
    const ids = tok.encode(prompt, { addSpecialTokens: true });
    const model = loadModel(tinyDir);
    const eos = model.config.eosTokenIds;
    const ref = (
      await generate(model, [ids], { maxNewTokens: 20, temperature: 0, stopTokens: [...eos, tok.eosTokenId!] })
    ).newTokens[0]!;
    const refText = tok.decode(ref, { skipSpecialTokens: true });
    expect(full.choices[0]!.text).toBe(refText);
    expect(full.usage!.prompt_tokens).toBe(ids.length);
    expect(full.usage!.completion_tokens).toBe(ref.length);
    expect(full.usage!.total_tokens).toBe(ids.length + ref.length);
    const streamed = await streamText(
      await s.client.completions.create({ model: MODEL, prompt, max_tokens: 20, temperature: 0, stream: true }),
    );
    expect(streamed.text).toBe(full.choices[0]!.text);
    expect(streamed.finish).toBe(full.choices[0]!.finish_reason);
  }, 60_000);

  it('accepts token-id prompts and lists of prompts', async () => {
    const r = await s.client.completions.create({
      model: MODEL,
      prompt: [
        [5, 6, 7],
        [8, 9],
      ],
      max_tokens: 3,
      temperature: 0,
    });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(r.usage!.prompt_tokens).toBe(5);
    const one = await s.client.completions.create({ model: MODEL, prompt: [5, 6, 7], max_tokens: 3, temperature: 0 });
    expect(one.choices[0]!.text).toBe(r.choices[0]!.text);
  }, 60_000);

  it('chat completions: streamed deltas concatenate to the non-streamed message; include_usage', async () => {
    const messages = [
      { role: 'system' as const, content: 'You are terse.' },
      { role: 'user' as const, content: 'Hello there' },
    ];
    const full = await s.client.chat.completions.create({ model: MODEL, messages, max_tokens: 16, temperature: 0 });
    const want = full.choices[0]!.message.content!;
    const stream = await s.client.chat.completions.create({
      model: MODEL,
      messages,
      max_tokens: 16,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage: OpenAI.CompletionUsage | undefined;
    let role: string | undefined;
    for await (const c of stream) {
      if (c.usage) usage = c.usage;
      for (const ch of c.choices) {
        role ??= ch.delta.role;
        text += ch.delta.content ?? '';
      }
    }
    expect(role).toBe('assistant');
    expect(text).toBe(want);
    // the second request found the prompt in the prefix cache
    expect({ ...usage, prompt_tokens_details: undefined }).toEqual({ ...full.usage, prompt_tokens_details: undefined });
    expect(usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThan(0);
    const promptIds = tok.encode('<|system|>You are terse.\n<|user|>Hello there\n<|assistant|>');
    expect(full.usage!.prompt_tokens).toBe(promptIds.length);
  }, 60_000);

  it('stop strings cut the text before them', async () => {
    const base = (
      await s.client.completions.create({
        model: MODEL,
        prompt: 'stop here',
        max_tokens: 24,
        temperature: 0,
        ignore_eos: true,
      } as OpenAI.CompletionCreateParamsNonStreaming)
    ).choices[0]!.text;
    const chars = [...base];
    expect(chars.length).toBeGreaterThan(6);
    const stop = chars.slice(4, 6).join('');
    const cut = base.slice(0, base.indexOf(stop));
    const r = await s.client.completions.create({
      model: MODEL,
      prompt: 'stop here',
      max_tokens: 24,
      temperature: 0,
      stop: [stop],
      ignore_eos: true,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(r.choices[0]!.text).toBe(cut);
    expect(r.choices[0]!.finish_reason).toBe('stop');
    const streamed = await streamText(
      await s.client.completions.create({
        model: MODEL,
        prompt: 'stop here',
        max_tokens: 24,
        temperature: 0,
        stop,
        stream: true,
        ignore_eos: true,
      } as OpenAI.CompletionCreateParamsStreaming),
    );
    expect(streamed.text).toBe(cut);
  }, 60_000);

  it('n choices: seeded sampling is reproducible, greedy choices agree', async () => {
    const a = await s.client.completions.create({
      model: MODEL,
      prompt: 'abc',
      max_tokens: 8,
      temperature: 1,
      n: 3,
      seed: 42,
    });
    const b = await s.client.completions.create({
      model: MODEL,
      prompt: 'abc',
      max_tokens: 8,
      temperature: 1,
      n: 3,
      seed: 42,
    });
    expect(a.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(b.choices.map((c) => c.text)).toEqual(a.choices.map((c) => c.text));
    expect(new Set(a.choices.map((c) => c.text)).size).toBeGreaterThan(1);
    const g = await s.client.completions.create({ model: MODEL, prompt: 'abc', max_tokens: 8, temperature: 0, n: 2 });
    expect(g.choices[0]!.text).toBe(g.choices[1]!.text);
    expect(g.usage!.prompt_tokens).toBe(tok.encode('abc', { addSpecialTokens: true }).length);
  }, 60_000);

  it('logprobs: the chosen token is the most likely under greedy decoding', async () => {
    const r = await s.client.completions.create({
      model: MODEL,
      prompt: 'xyz',
      max_tokens: 5,
      temperature: 0,
      logprobs: 3,
      ignore_eos: true,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    const lp = r.choices[0]!.logprobs!;
    expect(lp.text_offset!.length).toBe(5);
    expect(lp.tokens!.length).toBe(5);
    lp.top_logprobs!.forEach((top, i) => {
      const values = Object.values(top);
      expect(values.length).toBeGreaterThanOrEqual(1);
      expect(values.length).toBeLessThanOrEqual(3);
      expect(lp.token_logprobs![i]).toBeCloseTo(Math.max(...values), 10);
      expect(lp.token_logprobs![i]!).toBeLessThanOrEqual(0);
    });
    const c = await s.client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 4,
      temperature: 0,
      logprobs: true,
      top_logprobs: 2,
    });
    const content = c.choices[0]!.logprobs!.content!;
    expect(content.length).toBe(c.usage!.completion_tokens);
    for (const t of content) expect(t.top_logprobs.length).toBe(2);
  }, 60_000);

  it('errors: 400 for invalid requests, 404 for an unknown model', async () => {
    const bad = async (body: object, re: RegExp, status = 400): Promise<void> => {
      const r = await post(s.url, '/v1/completions', body);
      expect(r.status, JSON.stringify(r.json)).toBe(status);
      expect(r.json.error.message).toMatch(re);
      expect(typeof r.json.error.type).toBe('string');
    };
    await bad({ model: MODEL, prompt: 'x', temperature: 'hot' }, /temperature/);
    await bad({ model: MODEL, prompt: 'x', temperature: -1 }, /temperature/);
    await bad({ model: MODEL, prompt: 'x', max_tokens: 500 }, /context is 128 tokens/);
    await bad({ model: MODEL, prompt: 'x', colour: 'blue' }, /unknown field.*colour/);
    await bad({ model: MODEL, prompt: [] }, /prompt/);
    await bad({ model: MODEL, prompt: [5000] }, /outside the vocabulary/);
    await bad({ model: 'gpt-4', prompt: 'x' }, /does not exist/, 404);
    await expect(s.client.completions.create({ model: MODEL, prompt: 'x', temperature: -1 })).rejects.toBeInstanceOf(
      OpenAI.BadRequestError,
    );
    await expect(
      s.client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }),
    ).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  }, 60_000);
});

describe('server states and limits', () => {
  it('401 with --api-key and a wrong or missing Bearer token', async () => {
    const r = await startServer({ apiKey: 'sekret' });
    try {
      expect((await r.client.models.list()).data[0]!.id).toBe(MODEL);
      const wrong = new OpenAI({ baseURL: `${r.url}/v1`, apiKey: 'nope', maxRetries: 0 });
      await expect(wrong.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
      const missing = await fetch(`${r.url}/v1/models`);
      expect(missing.status).toBe(401);
      expect((await missing.json()).error.message).toMatch(/missing API key/);
    } finally {
      await r.close();
    }
  }, 60_000);

  it('503 and /health 503 while loading', async () => {
    const r = await startServer({ ready: false });
    try {
      expect((await fetch(`${r.url}/health`)).status).toBe(503);
      await expect(r.client.models.list()).rejects.toBeInstanceOf(OpenAI.InternalServerError);
      const res = await fetch(`${r.url}/v1/models`);
      expect(res.status).toBe(503);
      expect((await res.json()).error.message).toMatch(/loading/);
    } finally {
      await r.close();
    }
  });

  it('429 when the queue is full', async () => {
    // The engine's first step waits on a gate, so one request runs, one waits and the next is refused.
    const model = loadModel(tinyDir);
    const cache = model.newCache(1024, { blockSize: 8 });
    const inner = new ModelExecutor(model, cache);
    let open!: () => void;
    const gate = new Promise<void>((res) => (open = res));
    const executor: Executor = {
      vocabSize: inner.vocabSize,
      numMtpModules: 0,
      cache,
      run: async (segs) => {
        await gate;
        return inner.run(segs);
      },
      draft: (d) => inner.draft(d),
      truncate: (q, n) => inner.truncate(q, n),
    };
    const server = createServer({ modelName: MODEL });
    const url = await server.app.listen({ port: 0, host: '127.0.0.1' });
    server.ready({
      engine: new AsyncEngine(new EngineCore(executor, { maxRunningSeqs: 1 }), tok, { maxQueue: 1 }),
      chatTemplate: null,
    });
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 });
    try {
      const first = await client.completions.create({
        model: MODEL,
        prompt: 'a',
        max_tokens: 4,
        temperature: 0,
        stream: true,
      });
      const second = await client.completions.create({
        model: MODEL,
        prompt: 'b',
        max_tokens: 4,
        temperature: 0,
        stream: true,
      });
      await expect(client.completions.create({ model: MODEL, prompt: 'c', max_tokens: 4 })).rejects.toBeInstanceOf(
        OpenAI.RateLimitError,
      );
      const r = await post(url, '/v1/completions', { model: MODEL, prompt: 'c' });
      expect(r.status).toBe(429);
      expect(r.json.error.message).toMatch(/queue is full/);
      open();
      for await (const _ of first) void _;
      for await (const _ of second) void _;
      expect((await client.completions.create({ model: MODEL, prompt: 'c', max_tokens: 2 })).choices.length).toBe(1);
    } finally {
      await server.app.close();
    }
  }, 60_000);

  it('--mtp 1: speculative decoding serves the same greedy text and counts its drafts', async () => {
    const r = await startServer({ load: { mtp: 1 } });
    try {
      const body = {
        model: MODEL,
        prompt: 'speculate',
        max_tokens: 24,
        temperature: 0,
        ignore_eos: true,
      } as OpenAI.CompletionCreateParamsNonStreaming;
      const spec = await r.client.completions.create(body);
      const plain = await s.client.completions.create(body);
      expect(spec.choices[0]!.text).toBe(plain.choices[0]!.text);
      expect(spec.usage).toEqual({ ...plain.usage, prompt_tokens_details: { cached_tokens: 0 } });
      const metrics = await (await fetch(`${r.url}/metrics`)).text();
      const drafted = Number(/dsv3:spec_decode_num_draft_tokens_total\{[^}]*\} (\d+)/.exec(metrics)![1]);
      expect(drafted).toBeGreaterThanOrEqual(20);
      expect(metrics).toMatch(/dsv3:spec_decode_num_accepted_tokens_per_pos_total\{[^}]*position="0"[^}]*\} \d+/);
    } finally {
      await r.close();
    }
  }, 60_000);

  it('a client that disconnects aborts its request and frees its blocks', async () => {
    const r = await startServer({ load: { prefixCaching: false } });
    try {
      const stream = await r.client.completions.create({
        model: MODEL,
        prompt: 'long one',
        max_tokens: 110,
        temperature: 0,
        stream: true,
        ignore_eos: true,
      } as OpenAI.CompletionCreateParamsStreaming);
      let seen = 0;
      for await (const _ of stream) {
        if (++seen === 2) break; // leaving the loop closes the connection
      }
      const core = coreOf(r);
      const deadline = Date.now() + 20_000;
      while (core.executor.cache.freeBlocks !== core.executor.cache.numBlocks && Date.now() < deadline)
        await new Promise((res) => setTimeout(res, 20));
      expect(core.executor.cache.freeBlocks).toBe(core.executor.cache.numBlocks);
      expect(core.hasWork).toBe(false);
    } finally {
      await r.close();
    }
  }, 60_000);

  it('drain: stops accepting (503), finishes what runs, then closes', async () => {
    const r = await startServer();
    const stream = await r.client.completions.create({
      model: MODEL,
      prompt: 'drain',
      max_tokens: 30,
      temperature: 0,
      stream: true,
      ignore_eos: true,
    } as OpenAI.CompletionCreateParamsStreaming);
    const text = (async () => {
      let _t = '';
      let finish: string | null = null;
      for await (const c of stream) {
        _t += c.choices[0]?.text ?? '';
        finish = c.choices[0]?.finish_reason ?? finish;
      }
      return finish;
    })();
    const drained = r.server.drain();
    expect((await post(r.url, '/v1/completions', { model: MODEL, prompt: 'x' })).status).toBe(503);
    expect(await text).toBe('length');
    await drained;
  }, 60_000);
});

function coreOf(r: Running) {
  // a colocated server's core (a router's would be a RouterCore)
  return r.server.served!.engine.core as EngineCore;
}
