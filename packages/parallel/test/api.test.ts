// The API's contracts in one process: argument errors at the call site, a one-rank world, the
// rendezvous store, and two tcp ranks in one event loop disagreeing about what to run.
import { fromRaw, tensor } from '@dsv3/core';
import { describe, expect, it } from 'vitest';
import { CollectiveError, createLayoutGroups, GROUP_KINDS, initProcessGroup, ParallelLayout } from '../src/index.js';
import { freePort, twoRanks } from './helpers/two-ranks.js';
import { StoreClient, StoreServer } from '../src/comm/store.js';

describe('ProcessGroup API', () => {
  it('a one-rank world needs no launcher and its collectives are identities', async () => {
    const pg = await initProcessGroup({ env: {} });
    expect([pg.rank, pg.size, pg.id]).toEqual([0, 1, 0]);
    const t = tensor([1, 2, 3, 4], { shape: [2, 2] });
    const w = pg.allReduce(t, 'sum');
    expect(w.op).toBe('ALLREDUCE');
    expect(w.seq).toBe(1);
    expect(await (await w.wait()).toArray()).toEqual([
      [1, 2],
      [3, 4],
    ]);
    expect((await pg.allGather(t).wait()).shape).toEqual([2, 2]);
    expect((await pg.allToAll(t, [2]).wait()).outputSplits).toEqual([2]);
    await pg.barrier().wait();
    await pg.destroy();
    expect(() => pg.barrier()).toThrow('barrier: the process group was destroyed');
  });

  it('takes its operation timeout from DSV3_TIMEOUT_MS unless given', async () => {
    expect((await initProcessGroup({ env: { DSV3_TIMEOUT_MS: '1234' } })).timeoutMs).toBe(1234);
    expect((await initProcessGroup({ env: { DSV3_TIMEOUT_MS: '1234' }, timeoutMs: 99 })).timeoutMs).toBe(99);
    await expect(initProcessGroup({ env: { DSV3_TIMEOUT_MS: 'soon' } })).rejects.toThrow(
      'DSV3_TIMEOUT_MS="soon": expected a positive number of milliseconds',
    );
    await expect(initProcessGroup({ env: {}, transport: 'carrier-pigeon' as never })).rejects.toThrow(
      'unknown transport "carrier-pigeon"; expected local, tcp or mpi',
    );
  });

  it('rejects bad arguments at the call site with what was expected', async () => {
    const pg = await initProcessGroup({ env: {} });
    expect(() => pg.allReduce(new Uint8Array(4), 'sum', { dtype: 'fp8-e4m3' })).toThrow(
      /fp8-e4m3 data cannot be reduced .*dequantize FP8 payloads first/,
    );
    expect(() => pg.allReduce(new Uint16Array(4))).toThrow(
      "a Uint16Array holds bf16 or f16 bits; pass { dtype: 'bf16' } or { dtype: 'f16' }",
    );
    expect(() => pg.allReduce(new Float32Array(4), 'mean' as never)).toThrow(
      'unknown reduce op "mean"; expected one of sum, avg, max, min, prod',
    );
    expect(() => pg.allReduce(new Int32Array(4), 'avg')).toThrow('avg of i32 data is not defined');
    expect(() => pg.allReduce([1, 2] as never)).toThrow('expected a Tensor or a typed array, got Array');
    expect(() => pg.allToAll(new Float32Array(3), [2])).toThrow('inputSplits sum to 2 but the input has 3 rows');
    expect(() => pg.allToAll(new Float32Array(3), [1, 2])).toThrow(
      'inputSplits must list one count per rank (1), got 2',
    );
    expect(() => pg.allToAll(new Float32Array(3), [-3 + 6], [1.5])).toThrow(
      'outputSplits must be non-negative integers',
    );
    expect(() => pg.broadcast(new Float32Array(1), 1)).toThrow('broadcast root: 1 is not a rank of this 1-rank group');
    expect(() => pg.send(new Float32Array(1), 0)).toThrow('send: rank 0 is this rank; send and recv need another rank');
    expect(() => pg.newGroup([0, 0])).toThrow('newGroup: rank 0 is listed twice');
    expect(() => pg.newGroup([1])).toThrow('newGroup: rank 1 is not a rank of the 1-rank world');
    const t = fromRaw('f32', [3], new Float32Array(3));
    t.dispose();
    expect(() => pg.allGather(t)).toThrow('allGather: the tensor was disposed');
    await pg.destroy();
  });
});

describe('rendezvous store', () => {
  it('set / blocking get / add / wait / check / compareSet / delete', async () => {
    const server = await StoreServer.listen(0, '127.0.0.1');
    const a = await StoreClient.connect('127.0.0.1', server.port, 5000);
    const b = await StoreClient.connect('127.0.0.1', server.port, 5000);
    try {
      const later = b.get('k'); // blocks until a sets it
      await a.set('k', 'v1');
      expect(await later).toBe('v1');
      expect(await Promise.all([a.add('n', 2), b.add('n', 3)]).then(() => a.add('n', 0))).toBe(5);
      expect(await a.check(['k', 'n'])).toBe(true);
      expect(await a.check(['k', 'missing'])).toBe(false);
      const waited = b.wait(['x', 'y']);
      await a.set('x', '1');
      await a.set('y', '2');
      await waited;
      expect(await a.compareSet('k', 'nope', 'v2')).toBe('v1');
      expect(await a.compareSet('k', 'v1', 'v2')).toBe('v2');
      expect(await a.compareSet('fresh', '', 'made')).toBe('made');
      expect(await a.delete('k')).toBe(true);
      expect(await a.check(['k'])).toBe(false);
    } finally {
      a.close();
      b.close();
      await server.close();
    }
  });

  it('fails clearly when the store is unreachable or a key never comes', async () => {
    const port = await freePort();
    await expect(StoreClient.connect('127.0.0.1', port, 300)).rejects.toThrow(
      `could not reach the rendezvous store at 127.0.0.1:${port} within 300 ms (rank 0 hosts it`,
    );
    const server = await StoreServer.listen(0, '127.0.0.1');
    const c = await StoreClient.connect('127.0.0.1', server.port, 300);
    await expect(c.get('never')).rejects.toThrow('get(never) did not complete within 300 ms');
    c.close();
    await server.close();
  });
});

describe('ranks that disagree', () => {
  it('different operations at the same point fail with an explanation, not a hang', { timeout: 60_000 }, async () => {
    const [p0, p1] = await twoRanks();
    const w0 = p0.allReduce(new Float32Array(8));
    const w1 = p1.allGather(new Float32Array(8));
    const errs = await Promise.all([w0.wait().catch((e: Error) => e), w1.wait().catch((e: Error) => e)]);
    expect(
      errs.some(
        (e) =>
          e instanceof CollectiveError &&
          /every rank must call the group's operations in the same order/.test(e.message),
      ),
    ).toBe(true);
    await Promise.all([p0.destroy(), p1.destroy()]);
  });

  it('different buffer sizes fail naming the sizes', { timeout: 60_000 }, async () => {
    const [p0, p1] = await twoRanks(5000);
    const errs = await Promise.all([
      p0
        .broadcast(new Float32Array(8), 0)
        .wait()
        .catch((e: Error) => e),
      p1
        .broadcast(new Float32Array(4), 0)
        .wait()
        .catch((e: Error) => e),
    ]);
    expect((errs[1] as Error).message).toMatch(
      /rank 0 sent 32 bytes for BROADCAST #1 .*this rank expected 16: ranks disagree on the buffer size/,
    );
    await Promise.all([p0.destroy(), p1.destroy()]);
  });

  it('Work.wait(timeoutMs) times out naming the rank it waits for, and the peer learns of the abort', {
    timeout: 60_000,
  }, async () => {
    const [p0, p1] = await twoRanks();
    const w = p0.recv(new Float32Array(2), 1, 5);
    await expect(w.wait(200)).rejects.toThrow(
      /RECV #1 \(group 0, the world; this is rank 0\) timed out after 200 ms: still waiting for rank 1/,
    );
    await expect(p1.barrier().wait()).rejects.toThrow(
      /rank 0 aborted \(RECV #1 \(group 0\) timed out there\) during BARRIER #1/,
    );
    await Promise.all([p0.destroy(), p1.destroy()]);
  });
});

describe('parallel layouts', () => {
  it('partitions ranks tp × ep × dp × pp innermost first, every rank in exactly one group per kind', () => {
    const l = new ParallelLayout({ ep: 4, dp: 2, pp: 2 });
    expect(l.partition('ep')[0]).toEqual([0, 1, 2, 3]);
    expect(l.partition('ep').length).toBe(4);
    expect(l.partition('expertDp')).toEqual([
      [0, 4],
      [1, 5],
      [2, 6],
      [3, 7],
      [8, 12],
      [9, 13],
      [10, 14],
      [11, 15],
    ]);
    expect(l.partition('denseDp')[0]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(l.partition('pp')[0]).toEqual([0, 8]);
    for (const kind of GROUP_KINDS)
      expect(
        l
          .partition(kind)
          .flat()
          .sort((a, b) => a - b),
      ).toEqual(Array.from({ length: 16 }, (_, i) => i));
    expect(() => new ParallelLayout({ ep: 4, dp: 4 }).checkWorld(8)).toThrow(
      'parallel layout dp=4,pp=1,ep=4 needs dp·pp·ep·tp = 4·1·4·1 = 16 ranks, but the job has 8',
    );
  });

  it('splits an EP group spanning nodes into its intra-node and inter-node hops', () => {
    const l = new ParallelLayout({ ep: 4, dp: 2 }, { ranksPerNode: 2 });
    expect([l.epRanksPerNode, l.epNodes]).toEqual([2, 2]);
    expect(l.partition('epIntra')).toEqual([
      [0, 1],
      [2, 3],
      [4, 5],
      [6, 7],
    ]);
    expect(l.partition('epInter')).toEqual([
      [0, 2],
      [1, 3],
      [4, 6],
      [5, 7],
    ]);
    // An EP group inside one node: the intra hop is the EP group, the inter hop a single rank.
    const one = new ParallelLayout({ ep: 2, dp: 2 }, { ranksPerNode: 2 });
    expect(one.partition('epIntra')).toEqual(one.partition('ep'));
    expect(one.partition('epInter')).toEqual([[0], [1], [2], [3]]);
    expect(() => new ParallelLayout({ ep: 4 }, { ranksPerNode: 3 })).toThrow(
      /ranks per node \(3\) must be a positive integer dividing the 4 ranks/,
    );
    expect(() => new ParallelLayout({ ep: 2, dp: 4 }, { ranksPerNode: 4 }).partition('ep')).not.toThrow();
  });

  it("creates this rank's group of each kind", async () => {
    const [p0, p1] = await twoRanks();
    const layout = new ParallelLayout({ ep: 2 });
    const [g0, g1] = [createLayoutGroups(p0, layout), createLayoutGroups(p1, layout)];
    expect([g0.ep.size, g0.expertDp.size, g1.ep.rank, g1.expertDp.ranks]).toEqual([2, 1, 1, [1]]);
    const [a] = await Promise.all([
      g0.ep.allReduce(new Float32Array([1])).wait(),
      g1.ep.allReduce(new Float32Array([2])).wait(),
    ]);
    expect(a[0]).toBe(3);
    await Promise.all([p0.destroy(), p1.destroy()]);
  });
});
