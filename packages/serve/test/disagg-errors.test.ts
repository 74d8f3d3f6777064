// Bad input to the disaggregation endpoints gets a clear error, never a crash or a hang: pages for an
// unknown request or of the wrong size, malformed bodies, registration of a worker under the wrong
// role, requests the router cannot route. Workers run in this process on loopback.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DecodeWorker, EngineCoreError, ModelExecutor, PrefillWorker, RouterCore } from '../src/index.js';
import { greedy, tinyModel } from './helpers.js';

describe('disaggregation: bad input', () => {
  const model = tinyModel();
  const exec = (): ModelExecutor => new ModelExecutor(model, model.newCache(64 * 4, { blockSize: 4 }));
  const prefill = new PrefillWorker(exec(), { maxModelLen: 128 });
  const decode = new DecodeWorker(exec(), { maxModelLen: 128, pagesTimeoutMs: 500 });
  const router = new RouterCore({ healthIntervalMs: 60_000 });
  let pUrl = '';
  let dUrl = '';
  beforeAll(async () => {
    pUrl = await prefill.app.listen({ port: 0, host: '127.0.0.1' });
    dUrl = await decode.app.listen({ port: 0, host: '127.0.0.1' });
  });
  afterAll(async () => {
    await router.close();
    await prefill.app.close();
    await decode.app.close();
  });

  it('the router refuses requests before workers register, and workers under the wrong role', async () => {
    expect(() => router.add({ id: 'a', promptIds: [1, 2], params: greedy(2) })).toThrow(
      /no prefill worker is registered/,
    );
    await expect(router.register('decode', pUrl)).rejects.toThrow(/is a prefill worker, not decode/);
    await router.register('prefill', pUrl);
    await router.register('decode', dUrl);
    expect(router.maxModelLen).toBe(128);
    expect(() => router.add({ id: 'b', promptIds: Array(120).fill(5), params: greedy(20) })).toThrow(EngineCoreError);
    expect(() => router.add({ id: 'c', promptIds: [1, 5000], params: greedy(2) })).toThrow(
      /outside the vocabulary \[0, 1024\)/,
    );
    expect(() => router.add({ id: 'd', promptIds: [], params: greedy(2) })).toThrow(/empty/);
  });

  it('a decode worker answers bad pages with what was expected, and times out a request whose pages never come', async () => {
    const post = (path: string, body: BodyInit, headers: Record<string, string>): Promise<Response> =>
      fetch(dUrl + path, { method: 'POST', body, headers });
    const unknown = await post('/kv/nobody', new Uint8Array(8), {
      'content-type': 'application/octet-stream',
      'x-tokens': '1',
      'x-cache-dtype': 'f32',
    });
    expect(unknown.status).toBe(404);
    expect(await unknown.text()).toMatch(/not waiting on this worker/);
    expect((await post('/decode', JSON.stringify({ id: 1 }), { 'content-type': 'application/json' })).status).toBe(400);
    // a request waiting for its pages: a stream that ends with an error line after pagesTimeoutMs
    const stream = await post(
      '/decode',
      JSON.stringify({ id: 'w', promptIds: [3, 4, 5], params: { ...greedy(2), logitBias: [] } }),
      { 'content-type': 'application/json' },
    );
    const wrong = await post('/kv/w', new Uint8Array(12), {
      'content-type': 'application/octet-stream',
      'x-tokens': '2',
      'x-cache-dtype': 'f32',
    });
    expect(wrong.status).toBe(400);
    expect(await wrong.text()).toMatch(/expected 2560 bytes of latent pages for 2 tokens, got 12/);
    const tokensOff = await post('/kv/w', new Uint8Array(12), {
      'content-type': 'application/octet-stream',
      'x-tokens': '7',
      'x-cache-dtype': 'f32',
    });
    expect(await tokensOff.text()).toMatch(/prompt length minus one \(2\)/);
    expect(await stream.text()).toMatch(/"error":"no latent pages arrived within 500 ms"/);
    expect(decode.inFlight).toBe(0);
    expect(decode.core.stats().freeBlocks).toBe(decode.core.stats().totalBlocks);
  });

  it('a prefill worker refuses tokens outside the vocabulary (400) and reports an unreachable decode worker (502)', async () => {
    const bad = await fetch(`${pUrl}/prefill`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'x', tokens: [1, 99999], decodeUrl: dUrl }),
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toMatch(/outside the vocabulary/);
    const lost = await fetch(`${pUrl}/prefill`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'y', tokens: [1, 2, 3], decodeUrl: 'http://127.0.0.1:1' }),
    });
    expect(lost.status).toBe(502);
    expect((await lost.json()) as object).toMatchObject({ ok: false, decodeFailed: true });
    expect(prefill.engine.blocks.availableBlocks).toBe(prefill.engine.blocks.totalBlocks);
  });
});
