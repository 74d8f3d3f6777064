// Communication streams (the FB overlap's ordering rule): two concurrent streams on one group pair up
// their collectives by call order, which differs between ranks when their timing does; with a twin
// group per stream every collective meets its own counterpart. Two tcp ranks in one event loop.
import { describe, expect, it } from 'vitest';
import {
  exposedCommWaitMs,
  resetExposedCommWait,
  runStreams,
  setStreamTwin,
  streamAllToAll,
  streamGroup,
  type ProcessGroup,
} from '../src/index.js';
import { twoRanks } from './helpers/two-ranks.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What rank `rank`'s stream `stream` sends to `peer`: 2 + stream values (the streams' sizes differ too). */
const payload = (stream: number, rank: number): Float64Array =>
  Float64Array.from({ length: 2 * (2 + stream) }, (_, i) => 100 * stream + 10 * rank + (i % (2 + stream)));

/**
 * One all-to-all per stream; on each rank the stream named `late` starts 30 ms after the other, so
 * rank 0 calls stream 1's collective first and rank 1 stream 0's. Returns, per rank, each stream's output.
 */
async function skewed(
  worlds: ProcessGroup[],
  exchange: (g: ProcessGroup, buf: Float64Array) => Promise<Float64Array>,
): Promise<number[][][]> {
  return Promise.all(
    worlds.map(async (g) => {
      const late = g.rank === 0 ? 0 : 1;
      const one = async (stream: number): Promise<number[]> => {
        if (stream === late) await sleep(30);
        return [...(await exchange(g, payload(stream, g.rank)))];
      };
      return runStreams([() => one(0), () => one(1)]);
    }),
  );
}

describe('communication streams', () => {
  it('two streams on one group pair their collectives by call order: with skewed ranks they swap data', async () => {
    const worlds = await twoRanks();
    const seen: number[][][] = await Promise.all(
      worlds.map(async (g) => {
        const late = g.rank === 0 ? 0 : 1;
        // Both streams on the world group itself (what the twins prevent); equal sizes, so nothing
        // but the values shows the mix-up.
        const one = async (stream: number): Promise<number[]> => {
          if (stream === late) await sleep(30);
          const mine = Float64Array.from([100 * stream + 10 * g.rank, 100 * stream + 10 * g.rank]);
          const got = await g.allToAll(mine, [1, 1]).wait();
          return [...got.output];
        };
        return Promise.all([one(0), one(1)]);
      }),
    );
    // rank 0's stream 1 met rank 1's stream 0: each received the other stream's value
    expect(seen[0]![1]![1]).toBe(10);
    expect(seen[1]![0]![0]).toBe(100);
    await Promise.all(worlds.map((g) => g.destroy()));
  });

  it('with a twin group per stream each collective meets its own stream, whatever the skew', async () => {
    const worlds = await twoRanks();
    const twins = worlds.map((g) => g.newGroup([0, 1])!);
    worlds.forEach((g, r) => setStreamTwin(g, twins[r]!));
    const got = await skewed(worlds, async (g, buf) => {
      const n = buf.length / 2;
      return (await streamAllToAll(g, buf, [n, n])).output;
    });
    // stream s's block from rank p: 100·s + 10·p + j, in rank order
    const expected = (s: number) =>
      [0, 1].flatMap((p) => Array.from({ length: 2 + s }, (_, j) => 100 * s + 10 * p + j));
    for (const r of [0, 1]) for (const s of [0, 1]) expect(got[r]![s], `rank ${r} stream ${s}`).toEqual(expected(s));
    await Promise.all(worlds.map((g) => g.destroy()));
  });

  it('stream 1 refuses a group without a twin, and a twin must be another group over the same ranks', async () => {
    const worlds = await twoRanks();
    const g = worlds[0]!;
    expect(streamGroup(g)).toBe(g);
    await expect(runStreams([async () => streamGroup(g), async () => streamGroup(g)])).rejects.toThrow(
      /group 0 \(ranks 0, 1\) has no twin for communication stream 1/,
    );
    expect(() => setStreamTwin(g, g)).toThrow("group 0's twin must be another group");
    await Promise.all(worlds.map((w) => w.destroy()));
  });

  it('the exposed wait counts only time when every stream waits', async () => {
    const worlds = await twoRanks();
    const twins = worlds.map((g) => g.newGroup([0, 1])!);
    worlds.forEach((g, r) => setStreamTwin(g, twins[r]!));
    const busy = (ms: number) => {
      const end = performance.now() + ms;
      while (performance.now() < end);
    };
    // Rank 1 joins its all-to-all 60 ms late; rank 0 waits for it either alone or while its other
    // stream computes for 50 ms (in 5 ms slices, yielding between them).
    const round = async (overlap: boolean): Promise<number> => {
      resetExposedCommWait();
      const x = new Float64Array(2);
      const rank1 = (async () => {
        await sleep(60);
        await worlds[1]!.allToAll(x, [1, 1]).wait();
      })();
      const wait = () => streamAllToAll(worlds[0]!, x, [1, 1]);
      const work = async () => {
        for (let i = 0; i < 10; i++) {
          busy(5);
          await sleep(0);
        }
      };
      if (overlap) await runStreams([wait, work]);
      else {
        await wait();
        await work();
      }
      await rank1;
      return exposedCommWaitMs();
    };
    const alone = await round(false);
    const hidden = await round(true);
    expect(alone).toBeGreaterThan(50);
    expect(hidden).toBeLessThan(alone - 30);
    await Promise.all(worlds.map((w) => w.destroy()));
  });
});
