// Load options that cannot be honoured fail before serving, with the reason.
import { describe, expect, it } from 'vitest';
import { readConfig } from '@dsv3/model';
import { loadServed } from '../src/index.js';
import { servedWarmupTokens } from '../src/load.js';
import { tinyModelDir } from './helpers.js';

describe('loadServed options', () => {
  it("--dtype f16 is WebGPU's f16 compute mode: on the CPU it is refused, naming the alternatives", async () => {
    await expect(loadServed(await tinyModelDir(), { weights: 'f16' })).rejects.toThrow(
      /weights 'f16' is the WebGPU f16 compute mode; on cpu use weights 'bf16'/,
    );
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
