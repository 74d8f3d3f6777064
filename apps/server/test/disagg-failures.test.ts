// Failures of a disaggregated server as its HTTP clients see them (processes, as users run them): a
// decode worker killed mid-request gives its clients a 502 (non-streamed) or an error chunk with code
// 502 then [DONE] (streamed) — never a hang; with no decode worker left new requests get 503; a new
// decode worker registers and the router serves again.
import type { ChildProcess } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { killAll, MODEL, post, startCli, streamEvents, tinyModelDir } from './helpers.js';

const procs: ChildProcess[] = [];
afterAll(() => killAll(procs));

describe('dsv3-serve --role: a lost decode worker, end to end over HTTP', () => {
  it('502 for the requests it held, 503 while none is left, served again once one registers', async () => {
    const dir = await tinyModelDir();
    const common = ['--model', dir, '--served-model-name', MODEL, '--kv-cache-tokens', '2048'];
    const router = startCli([...common, '--role', 'router', '--port', '0', '--control-port', '0'], procs);
    const control = (await router.waitFor(/workers register at (\S+);/))[1]!;
    const worker = (role: string) => startCli([...common, '--role', role, '--port', '0', '--router', control], procs);
    const prefill = worker('prefill');
    const decode = worker('decode');
    await Promise.all([prefill.waitFor(/registered with/), decode.waitFor(/registered with/)]);
    const url = (await router.waitFor(/ready \(router\): model "[^"]+" on (\S+)/))[1]!;

    // two long requests on the one decode worker; it is killed once the streamed one has begun
    const long = {
      model: MODEL,
      prompt: Array.from({ length: 20 }, (_, i) => 7 + i),
      max_tokens: 100,
      ignore_eos: true,
    };
    let killed = false;
    const t0 = Date.now();
    const plain = post(url, '/v1/completions', long);
    const streamed = streamEvents(url, long, () => {
      killed = decode.proc.kill('SIGKILL');
    });
    const [p, events] = await Promise.all([plain, streamed]);
    expect(killed).toBe(true);
    expect(p.status).toBe(502);
    expect(p.json.error.message).toMatch(/decode worker .* (lost|unreachable)/);
    expect(p.json.error.code).toBe(502);
    // the stream: some tokens, then an error chunk, then the end marker
    expect(events.at(-1)).toBe('[DONE]');
    const err = JSON.parse(events.at(-2)!) as { error: { message: string; code: number } };
    expect(err.error.code).toBe(502);
    expect(err.error.message).toMatch(/decode worker .* lost/);
    expect(Date.now() - t0).toBeLessThan(60_000);

    // until the router notices (missed health checks) a request may still be routed there (502);
    // after, there is no decode worker (503) — never a hang, never another status
    const short = { model: MODEL, prompt: [5, 6, 7], max_tokens: 4 };
    let status = 0;
    const until = Date.now() + 60_000;
    while (status !== 503 && Date.now() < until) {
      const r = await post(url, '/v1/completions', short);
      status = r.status;
      expect([502, 503]).toContain(status);
      if (status === 503) expect(r.json.error.message).toMatch(/no decode worker is registered/);
      else await new Promise((r) => setTimeout(r, 200));
    }
    expect(status).toBe(503);

    // a new decode worker registers; the router serves again
    await worker('decode').waitFor(/registered with/);
    const ok = await post(url, '/v1/completions', short);
    expect(ok.status).toBe(200);
    expect(ok.json.usage.completion_tokens).toBeGreaterThan(0);
  }, 240_000);
});
