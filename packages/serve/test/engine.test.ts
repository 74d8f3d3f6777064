// The async front end: streams, stop strings, queue bound, aborts through a signal, drain, and a
// request whose output cannot be processed failing alone while the engine keeps serving.
import { describe, expect, it } from 'vitest';
import type { Tokenizer } from '@dsv3/model';
import { AsyncEngine, QueueFullError, EngineClosedError, type GenerationChunk } from '../src/index.js';
import { greedy, makeCore, prompt } from './helpers.js';
import { tinyTokenizer } from './tokenizer.js';

async function collect(it: AsyncIterable<GenerationChunk>): Promise<GenerationChunk[]> {
  const out: GenerationChunk[] = [];
  for await (const c of it) out.push(c);
  return out;
}

describe('AsyncEngine', () => {
  it('streams text whose pieces join to the decode of the tokens, with usage at the end', async () => {
    const tok = tinyTokenizer();
    const engine = new AsyncEngine(makeCore(), tok);
    const chunks = await collect(
      engine.generate({ promptIds: prompt(10, 1), params: greedy(12, { ignoreEos: true }) }),
    );
    const ids = chunks.flatMap((c) => c.tokenIds);
    expect(ids).toHaveLength(12);
    expect(chunks.map((c) => c.text).join('')).toBe(tok.decode(ids, { skipSpecialTokens: true }));
    expect(chunks.at(-1)).toMatchObject({ finishReason: 'length', usage: { promptTokens: 10, completionTokens: 12 } });
  }, 60_000);

  it('refuses past the queue bound, aborts through a signal, drains', async () => {
    const core = makeCore({ maxRunningSeqs: 1, prefixCaching: false });
    const engine = new AsyncEngine(core, tinyTokenizer(), { maxQueue: 1 });
    const ac = new AbortController();
    const first = engine.generate({ promptIds: prompt(5, 2), params: greedy(40, { ignoreEos: true }) }, ac.signal);
    const second = engine.generate({ promptIds: prompt(5, 3), params: greedy(3, { ignoreEos: true }) });
    expect(() => engine.generate({ promptIds: prompt(5, 4), params: greedy(3) })).toThrow(QueueFullError);
    await first.next();
    ac.abort();
    const rest = await collect(first);
    expect(rest.at(-1)?.finishReason ?? 'abort').toBe('abort');
    expect((await collect(second)).at(-1)!.finishReason).toBe('length');
    await engine.drain();
    expect(() => engine.generate({ promptIds: prompt(5, 4), params: greedy(3) })).toThrow(EngineClosedError);
    expect(core.executor.cache.freeBlocks).toBe(core.executor.cache.numBlocks);
  }, 60_000);

  it('a request whose output fails to decode fails alone; the engine keeps serving', async () => {
    const base = tinyTokenizer();
    let calls = 0;
    const flaky: Tokenizer = Object.assign(Object.create(base) as Tokenizer, {
      decode: (ids: readonly number[], o?: { skipSpecialTokens?: boolean }) => {
        if (calls++ === 0) throw new Error('decoder exploded');
        return base.decode(ids, o);
      },
    });
    const core = makeCore({ prefixCaching: false });
    const engine = new AsyncEngine(core, flaky);
    await expect(
      collect(engine.generate({ promptIds: prompt(4, 5), params: greedy(4, { ignoreEos: true }) })),
    ).rejects.toThrow(/decoder exploded/);
    const ok = await collect(engine.generate({ promptIds: prompt(4, 6), params: greedy(4, { ignoreEos: true }) }));
    expect(ok.at(-1)!.finishReason).toBe('length');
    expect(core.executor.cache.freeBlocks).toBe(core.executor.cache.numBlocks);
  }, 60_000);
});
