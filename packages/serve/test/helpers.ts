// Shared test setup: the tiny-v3 checkpoint and engines over it.
import { join } from 'node:path';
import { tensor } from '@dsv3/core';
import { loadModel, type DeepseekV3ForCausalLM } from '@dsv3/model';
import {
  defaultSamplingParams,
  EngineCore,
  ModelExecutor,
  type EngineCoreOptions,
  type Executor,
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

/**
 * Random weights never agree with their MTP module, so the accepted path needs good drafts: this
 * executor runs the real model (the MTP cache grows as it must) but makes 7 of every 10 draft rows
 * propose the reference's next token, looked up in `next` by the comma-joined tokens before it.
 */
export function oracleExecutor(inner: ModelExecutor, next: ReadonlyMap<string, number>): Executor {
  const history = new Map<number, number[]>();
  const mtpLayer = inner.model.config.numHiddenLayers;
  let calls = 0;
  return {
    vocabSize: inner.vocabSize,
    numMtpModules: inner.numMtpModules,
    cache: inner.cache,
    async run(segs) {
      for (const sg of segs)
        history.set(sg.seq, [...(inner.cache.length(sg.seq, 0) ? history.get(sg.seq)! : []), ...sg.tokens]);
      return inner.run(segs);
    },
    truncate(seq, length) {
      history.set(seq, history.get(seq)!.slice(0, length));
      inner.truncate(seq, length);
    },
    async draft(inputs, ids) {
      const before = inputs.map((d) => inner.cache.length(d.seq, mtpLayer));
      const logits = await inner.draft(inputs, ids);
      const following = ids ? Array.from((await ids.data()) as Int32Array) : inputs.flatMap((d) => d.tokens!);
      const real = Float32Array.from((await logits.data()) as Float32Array);
      const V = inner.vocabSize;
      let row = 0;
      let first = 0;
      inputs.forEach((d, i) => {
        const R = d.logitRows ?? 1;
        for (let j = d.count - R; j < d.count; j++, row++) {
          const known = [...history.get(d.seq)!.slice(0, before[i]! + j + 1), following[first + j]!];
          const t = next.get(known.join(','));
          if (t === undefined || calls++ % 10 >= 7) continue;
          real.fill(0, row * V, (row + 1) * V);
          real[row * V + t] = 1;
        }
        first += d.count;
      });
      return tensor(real, { shape: logits.shape, backend: logits.backend });
    },
  };
}
