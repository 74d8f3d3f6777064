// dsv3-serve with --backend webgpu (lavapipe in CI), end to end through the OpenAI client: a greedy and
// a seeded request with MTP drafting answer what the CPU server answers. Skips with a visible warning
// without an adapter, unless DSV3_REQUIRE_WEBGPU=1.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webGpuForTests } from '@dsv3/core/node';
import { MODEL, startServer, type Running } from './helpers.js';

let hasGpu = false;
const servers: Running[] = [];
beforeAll(async () => {
  const probe = await webGpuForTests('server');
  hasGpu = probe !== null;
  probe?.dispose();
}, 120_000);
afterAll(async () => {
  for (const s of servers) await s.close();
});

describe('dsv3-serve --backend webgpu', () => {
  it('a greedy and a seeded completion with --mtp 1 equal the CPU server', async (ctx) => {
    if (!hasGpu) return ctx.skip();
    const answers = async (backend: 'cpu' | 'webgpu'): Promise<string[]> => {
      const s = await startServer({ load: { backend, mtp: 1, kvCacheTokens: 1024 } });
      servers.push(s);
      const ask = async (o: { temperature: number; seed?: number }): Promise<string> => {
        const r = await s.client.completions.create({ model: MODEL, prompt: 'hello world', max_tokens: 6, ...o });
        expect(r.usage?.completion_tokens).toBeGreaterThan(0);
        return r.choices[0]!.text;
      };
      return [
        await ask({ temperature: 0 }),
        await ask({ temperature: 0.8, seed: 5 }),
        await ask({ temperature: 0.8, seed: 5 }),
      ];
    };
    const cpu = await answers('cpu');
    expect(cpu[2]).toBe(cpu[1]);
    expect(await answers('webgpu')).toEqual(cpu);
  }, 300_000);
});
