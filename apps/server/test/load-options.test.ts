// Load options that cannot be honoured fail before serving, with the reason.
import { readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readConfig } from '@dsv3/model';
import { loadServed } from '../src/index.js';
import { servedWarmupTokens } from '../src/load.js';
import { MODEL, startServer, tinyModelDir } from './helpers.js';

describe('loadServed options', () => {
  it("--dtype f16 is WebGPU's f16 compute mode: on the CPU it is refused, naming the alternatives", async () => {
    await expect(loadServed(await tinyModelDir(), { weights: 'f16' })).rejects.toThrow(
      /weights 'f16' is the WebGPU f16 compute mode; on cpu use weights 'bf16'/,
    );
  });
});

describe('--map-weights', () => {
  it("serves bf16 weights mapped from the checkpoint's pages: the greedy completion of a server that reads them", async () => {
    const file = realpathSync(join(await tinyModelDir(), 'model.safetensors'));
    const messages = [{ role: 'user' as const, content: 'mapped or read' }];
    const answer = async (mapWeights: boolean): Promise<string | null> => {
      const s = await startServer({ load: { weights: 'bf16', mapWeights } });
      try {
        if (mapWeights && process.env.DSV3_REQUIRE_NATIVE_KERNELS === '1' && process.platform === 'linux')
          expect(readFileSync('/proc/self/maps', 'utf8')).toContain(file);
        const r = await s.client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, temperature: 0 });
        return r.choices[0]!.message.content;
      } finally {
        await s.close();
      }
    };
    const read = await answer(false);
    expect(read).toBeTruthy();
    expect(await answer(true)).toBe(read);
  });
});

describe('the warm-up at load', () => {
  it('runs on the CPU for the whole model, within the positions; not on WebGPU nor on a rank holding part of it', async () => {
    const dir = await tinyModelDir();
    const maxPos = readConfig(dir).maxPositionEmbeddings;
    expect(servedWarmupTokens(dir, {})).toBe(Math.min(128, maxPos - 1));
    expect(servedWarmupTokens(dir, { warmupTokens: 7 })).toBe(7);
    expect(servedWarmupTokens(dir, { warmupTokens: 0 })).toBe(0);
    expect(servedWarmupTokens(dir, { warmupTokens: 10 ** 6 })).toBe(maxPos - 1);
    expect(servedWarmupTokens(dir, { backend: 'webgpu' })).toBe(0);
    expect(servedWarmupTokens(dir, { keep: () => true })).toBe(0);
  });
});
