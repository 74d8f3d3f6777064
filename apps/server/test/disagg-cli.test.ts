// dsv3-serve --role router|prefill|decode as processes (the CLI as users run it): the router's OpenAI
// API answers a chat completion exactly as the colocated server does (greedy).
import type { ChildProcess } from 'node:child_process';
import OpenAI from 'openai';
import { afterAll, describe, expect, it } from 'vitest';
import { killAll, MODEL, startCli, startServer, tinyModelDir } from './helpers.js';

const procs: ChildProcess[] = [];
const start = (args: string[]) => startCli(args, procs);
afterAll(() => killAll(procs));

describe('dsv3-serve --role (disaggregated, processes)', () => {
  it('router + prefill + decode answer like the colocated server', async () => {
    const dir = await tinyModelDir();
    const common = ['--model', dir, '--served-model-name', MODEL, '--kv-cache-tokens', '2048'];
    const router = start([...common, '--role', 'router', '--port', '0', '--control-port', '0']);
    const control = (await router.waitFor(/workers register at (\S+);/))[1]!;
    const workers = ['prefill', 'decode'].map((role) =>
      start([...common, '--role', role, '--port', '0', '--router', control]),
    );
    await Promise.all(workers.map((w) => w.waitFor(/registered with/)));
    const url = (await router.waitFor(/ready \(router\): model "[^"]+" on (\S+)/))[1]!;
    const messages = [{ role: 'user' as const, content: 'disaggregated hello' }];
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0, timeout: 60_000 });
    const got = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, temperature: 0 });
    const colocated = await startServer();
    try {
      const want = await colocated.client.chat.completions.create({
        model: MODEL,
        messages,
        max_tokens: 12,
        temperature: 0,
      });
      expect(got.choices[0]!.message.content).toBe(want.choices[0]!.message.content);
      expect(got.usage?.completion_tokens).toBe(want.usage?.completion_tokens);
    } finally {
      await colocated.close();
    }
  }, 180_000);
});
