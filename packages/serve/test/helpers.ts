// Shared test setup: the tiny-v3 checkpoint and engines over it.
import { join } from 'node:path';
import { loadModel, type DeepseekV3ForCausalLM } from '@dsv3/model';
import {
  defaultSamplingParams,
  EngineCore,
  ModelExecutor,
  type EngineCoreOptions,
  type RequestOutput,
  type SamplingParams,
} from '../src/index.js';

export const tinyDir = join(import.meta.dirname, '../../core/test/fixtures/tiny-v3');
let shared: DeepseekV3ForCausalLM | null = null;
export function tinyModel(): DeepseekV3ForCausalLM {
  return (shared ??= loadModel(tinyDir));
}

export function greedy(maxTokens: number, extra: Partial<SamplingParams> = {}): SamplingParams {
  return { ...defaultSamplingParams, temperature: 0, maxTokens, ...extra };
}

export function makeCore(opts: EngineCoreOptions & { blocks?: number; blockSize?: number } = {}): EngineCore {
  const model = tinyModel();
  const bs = opts.blockSize ?? 4;
  const cache = model.newCache((opts.blocks ?? 256) * bs, { blockSize: bs });
  return new EngineCore(new ModelExecutor(model, cache), opts);
}

/** Steps the core until idle; the tokens each request generated. */
export async function drain(core: EngineCore): Promise<{ tokens: Map<string, number[]>; outputs: RequestOutput[] }> {
  const tokens = new Map<string, number[]>();
  const outputs: RequestOutput[] = [];
  for (let guard = 0; core.hasWork; guard++) {
    if (guard > 10000) throw new Error('engine did not finish');
    for (const o of await core.step()) {
      outputs.push(o);
      tokens.set(o.id, [...(tokens.get(o.id) ?? []), ...o.newTokens]);
    }
  }
  return { tokens, outputs };
}

/** A deterministic prompt of `n` tokens. */
export function prompt(n: number, seed: number, vocab = 1024): number[] {
  return Array.from({ length: n }, (_, i) => ((seed * 131 + i * 37 + ((i * i) % 17)) % (vocab - 2)) + 2);
}
