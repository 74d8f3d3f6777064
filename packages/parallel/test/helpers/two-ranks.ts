// Two tcp ranks in one process (one event loop), for API tests that need a peer.
import net from 'node:net';
import { initProcessGroup, type ProcessGroup } from '../../src/index.js';

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export async function twoRanks(timeoutMs = 20_000): Promise<[ProcessGroup, ProcessGroup]> {
  const port = String(await freePort());
  const env = (rank: number) => ({ RANK: String(rank), WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: port });
  return Promise.all([initProcessGroup({ env: env(0), timeoutMs }), initProcessGroup({ env: env(1), timeoutMs })]);
}
