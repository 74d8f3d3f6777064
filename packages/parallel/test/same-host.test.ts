// The tcp transport's same-host path: ranks of one host (one boot, one network namespace) read from each
// other over Unix domain sockets, unless DSV3_TCP_SAME_HOST=tcp; a Unix socket that cannot be reached
// falls back to TCP. The multi-process collectives run both ways in tcp.test.ts, the cross-namespace
// mesh in netns.test.ts.
import net from 'node:net';
import { readlinkSync } from 'node:fs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { initProcessGroup, type ProcessGroup } from '../src/index.js';
import { hostIdentity, sameHostFromEnv, unixSocketPath } from '../src/comm/same-host.js';
import { freePort } from './helpers/two-ranks.js';

async function pair(extra: Record<string, string> = {}): Promise<[ProcessGroup, ProcessGroup]> {
  const port = String(await freePort());
  const env = (rank: number) => ({
    RANK: String(rank),
    WORLD_SIZE: '2',
    MASTER_ADDR: '127.0.0.1',
    MASTER_PORT: port,
    ...extra,
  });
  return Promise.all([
    initProcessGroup({ env: env(0), timeoutMs: 20_000 }),
    initProcessGroup({ env: env(1), timeoutMs: 20_000 }),
  ]);
}

/** A 3 MiB all-reduce (large enough for the direct exchange's reads in place) gives both ranks the sum. */
async function checkSum(pgs: ProcessGroup[]): Promise<void> {
  const n = 3 << 18;
  const inputs = pgs.map((_, r) => Float32Array.from({ length: n }, (_, i) => ((i * 7 + r * 13) % 101) - 50));
  const want = inputs[0]!.map((x, i) => x + inputs[1]![i]!);
  const outs = await Promise.all(pgs.map((pg, r) => pg.allReduce(inputs[r]!, 'sum').wait()));
  for (const out of outs) for (let i = 0; i < n; i += 997) expect((out as Float32Array)[i]).toBe(want[i]);
}

/** Each rank reads the other over `path`, a 3 MiB all-reduce over those links is right, then both close. */
async function expectLinksAndSum(pgs: ProcessGroup[], path: 'unix' | 'tcp'): Promise<void> {
  expect(pgs.map((pg) => pg.links)).toEqual([
    [null, path],
    [path, null],
  ]);
  await checkSum(pgs);
  await Promise.all(pgs.map((pg) => pg.destroy()));
}

afterEach(() => vi.restoreAllMocks());

describe('same-host links of the tcp transport', () => {
  it('reads DSV3_TCP_SAME_HOST: unset or unix, tcp, and a clear error otherwise', async () => {
    expect(sameHostFromEnv(undefined)).toBe('unix');
    expect(sameHostFromEnv('')).toBe('unix');
    expect(sameHostFromEnv('unix')).toBe('unix');
    expect(sameHostFromEnv('tcp')).toBe('tcp');
    expect(() => sameHostFromEnv('shm')).toThrow(
      'DSV3_TCP_SAME_HOST="shm": expected unix (peers on this host over a Unix domain socket, the default) or tcp',
    );
    const port = String(await freePort());
    await expect(
      initProcessGroup({
        env: { RANK: '0', WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: port, DSV3_TCP_SAME_HOST: 'udp' },
      }),
    ).rejects.toThrow('DSV3_TCP_SAME_HOST="udp"');
  });

  it.runIf(process.platform === 'linux')(
    'names one boot and one network namespace on Linux; sockets are abstract',
    () => {
      const id = hostIdentity();
      expect(id).toBe(hostIdentity());
      expect(id).toContain(readlinkSync('/proc/self/ns/net'));
      expect(unixSocketPath('0123abcd', 3)).toBe('\0dsv3-0123abcd-3');
    },
  );

  it('ranks of one host read from each other over Unix sockets by default', async () => {
    const pgs = await pair();
    await expectLinksAndSum(pgs, 'unix');
  });

  it('DSV3_TCP_SAME_HOST=tcp keeps them on loopback TCP', async () => {
    const pgs = await pair({ DSV3_TCP_SAME_HOST: 'tcp' });
    await expectLinksAndSum(pgs, 'tcp');
  });

  it('a Unix socket that refuses the dial (a sandbox, another mount) falls back to TCP', async () => {
    const connect = net.connect;
    const refused: string[] = [];
    vi.spyOn(net, 'connect').mockImplementation(((opts: net.NetConnectOpts) => {
      if ('path' in opts && opts.path) {
        refused.push(opts.path);
        const s = new net.Socket();
        setImmediate(() =>
          s.destroy(Object.assign(new Error(`connect ECONNREFUSED ${opts.path}`), { code: 'ECONNREFUSED' })),
        );
        return s;
      }
      return connect(opts);
    }) as typeof net.connect);
    const pgs = await pair();
    expect(refused.length).toBe(2);
    await expectLinksAndSum(pgs, 'tcp');
  });
});
