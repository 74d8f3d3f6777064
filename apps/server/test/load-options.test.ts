// Load options that cannot be honoured fail before serving, with the reason.
import { describe, expect, it } from 'vitest';
import { loadServed } from '../src/index.js';
import { tinyModelDir } from './helpers.js';

describe('loadServed options', () => {
  it("--dtype f16 is WebGPU's f16 compute mode: on the CPU it is refused, naming the alternatives", async () => {
    await expect(loadServed(await tinyModelDir(), { weights: 'f16' })).rejects.toThrow(
      /weights 'f16' is the WebGPU f16 compute mode; on cpu use weights 'bf16'/,
    );
  });
});
