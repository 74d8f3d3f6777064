// Fuzzed bad requests each get a 4xx with a message and the server keeps serving; /metrics exposes
// the latency histograms, gauges and counters after traffic.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '@dsv3/core';
import { MODEL, startServer, type Running } from './helpers.js';

let s: Running;
beforeAll(async () => {
  s = await startServer();
}, 60_000);
afterAll(async () => s?.close());

async function raw(
  path: string,
  body: Uint8Array | string,
  contentType = 'application/json',
): Promise<{ status: number; text: string }> {
  const res = await fetch(s.url + path, {
    method: 'POST',
    headers: { 'content-type': contentType },
    body: typeof body === 'string' ? body : Buffer.from(body),
  });
  return { status: res.status, text: await res.text() };
}

function expect4xx(r: { status: number; text: string }, what: string): void {
  expect(r.status, `${what} -> ${r.status} ${r.text}`).toBeGreaterThanOrEqual(400);
  expect(r.status, `${what} -> ${r.status} ${r.text}`).toBeLessThan(500);
  const body = JSON.parse(r.text) as { error: { message: string; type: string } };
  expect(typeof body.error.message, what).toBe('string');
  expect(body.error.message.length, what).toBeGreaterThan(0);
}

const valid = { model: MODEL, prompt: 'hello', max_tokens: 2, temperature: 0 };
const weird: unknown[] = [
  null,
  true,
  -1,
  0,
  1e308,
  -1e308,
  2 ** 53 + 2,
  'x',
  '',
  [],
  [1, 'a'],
  {},
  { a: 1 },
  1.5,
  -0.5,
  '\u0000',
  'a'.repeat(10000),
];

describe('fuzzed bad requests', () => {
  it('malformed JSON, wrong shapes and invalid UTF-8: 4xx with a message', async () => {
    const bodies: [string, Uint8Array | string, string?][] = [
      ['truncated json', '{"model": "tiny-v3", "prompt": "x"'],
      ['trailing garbage', '{"model": "tiny-v3"} xyz'],
      ['not json', 'hello world'],
      ['empty body', ''],
      ['array body', '[1,2,3]'],
      ['string body', '"text"'],
      ['null body', 'null'],
      ['invalid utf-8', Uint8Array.from([0x7b, 0x22, 0x6d, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d])],
      ['overlong utf-8', Uint8Array.from([0x7b, 0x22, 0xc0, 0xaf, 0x22, 0x3a, 0x31, 0x7d])],
      ['lone surrogate escapes are valid json but no model', '{"model": "\\ud800", "prompt": "x"}'],
      ['deep nesting', '['.repeat(5000) + ']'.repeat(5000)],
      ['numbers past double', JSON.stringify(valid).replace('"max_tokens":2', '"max_tokens":1e400')],
      ['wrong content type', JSON.stringify(valid), 'text/plain'],
      ['huge body', JSON.stringify({ ...valid, prompt: 'x'.repeat(5 * 1024 * 1024) })],
    ];
    for (const [what, body, ct] of bodies) {
      for (const path of ['/v1/completions', '/v1/chat/completions'])
        expect4xx(await raw(path, body, ct), `${what} ${path}`);
    }
  }, 120_000);

  it('seeded field mutations: wrong types, huge and negative numbers, unknown fields', async () => {
    const rng = new Rng(7);
    const fields = [
      'model',
      'prompt',
      'max_tokens',
      'temperature',
      'top_p',
      'top_k',
      'min_p',
      'n',
      'stream',
      'stop',
      'seed',
      'logprobs',
      'presence_penalty',
      'frequency_penalty',
      'logit_bias',
      'stream_options',
      'bogus_field',
    ];
    let refused = 0;
    for (let i = 0; i < 150; i++) {
      const body: Record<string, unknown> = { ...valid };
      const k = fields[rng.integer(0, fields.length)]!;
      body[k] = weird[rng.integer(0, weird.length)];
      const chat = i % 2 === 1;
      if (chat) {
        delete body.prompt;
        body.messages = k === 'prompt' ? (body.prompt ?? weird[i % weird.length]) : [{ role: 'user', content: 'hi' }];
      }
      const r = await raw(chat ? '/v1/chat/completions' : '/v1/completions', JSON.stringify(body));
      expect(r.status, `${k}=${JSON.stringify(body[k])?.slice(0, 40)} -> ${r.text.slice(0, 200)}`).toBeLessThan(500);
      if (r.status >= 400) {
        expect4xx(r, `${k}=${JSON.stringify(body[k])?.slice(0, 40)}`);
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(50);
  }, 180_000);

  it('still serves after the abuse', async () => {
    const r = await s.client.completions.create({ model: MODEL, prompt: 'ok', max_tokens: 3, temperature: 0 });
    expect(r.choices[0]!.finish_reason).toMatch(/length|stop/);
    expect((await fetch(`${s.url}/health`)).status).toBe(200);
  }, 60_000);
});

describe('/metrics', () => {
  it('exposes latency histograms, gauges and counters in Prometheus text format', async () => {
    await s.client.completions.create({ model: MODEL, prompt: 'metrics', max_tokens: 4, temperature: 0 });
    const res = await fetch(`${s.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/plain/);
    const text = await res.text();
    for (const name of [
      'dsv3:time_to_first_token_seconds_bucket',
      'dsv3:inter_token_latency_seconds_count',
      'dsv3:e2e_request_latency_seconds_sum',
      'dsv3:num_requests_running',
      'dsv3:num_requests_waiting',
      'dsv3:kv_cache_usage_perc',
      'dsv3:prefix_cache_hit_rate',
      'dsv3:prompt_tokens_total',
      'dsv3:generation_tokens_total',
      'dsv3:spec_decode_num_draft_tokens_total',
    ]) {
      expect(text).toContain(name);
    }
    const count = Number(/dsv3:time_to_first_token_seconds_count\{[^}]*\} (\d+)/.exec(text)![1]);
    expect(count).toBeGreaterThanOrEqual(1);
    const gen = Number(/dsv3:generation_tokens_total\{[^}]*\} (\d+)/.exec(text)![1]);
    expect(gen).toBeGreaterThanOrEqual(4);
  });
});
