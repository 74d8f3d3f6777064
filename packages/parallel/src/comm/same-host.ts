// Which ranks of a tcp job share a host, and the Unix domain socket address that reaches a rank there.
// Peers on one host need not go through the TCP/IP stack: a Unix stream socket carries the same bytes
// with the same framing for 0.65–0.8x the CPU per byte of loopback TCP (`bench/tcp-streams.ts`), and with
// several ranks per host the collectives are bounded by that CPU.
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';

/** How a tcp rank reaches peers on its own host. */
export type SameHostPath = 'unix' | 'tcp';

/**
 * Ranks with the same identity can reach each other's Unix sockets. On Linux that is one boot of one
 * kernel (its random boot id) and one network namespace, the scope of abstract socket names: ranks in
 * other namespaces (containers, or the network-namespace test's "machines") dial over TCP. Elsewhere
 * the host name decides, and a dial that fails falls back to TCP.
 */
export function hostIdentity(): string {
  if (process.platform === 'linux') {
    try {
      const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
      return `linux:${boot}:${readlinkSync('/proc/self/ns/net')}`;
    } catch {
      // /proc not mounted: fall through to the host name
    }
  }
  return `host:${hostname()}`;
}

/**
 * Where a rank listens for same-host peers: an abstract socket on Linux (no file to clean up, gone with
 * the process), a named pipe on Windows, a socket file in the temporary directory elsewhere. `job` is the
 * job's random token, so concurrent jobs never meet.
 */
export function unixSocketPath(job: string, rank: number): string {
  const name = `dsv3-${job}-${rank}`;
  if (process.platform === 'linux') return `\0${name}`;
  if (process.platform === 'win32') return `\\\\.\\pipe\\${name}`;
  return join(tmpdir(), `${name}.sock`);
}

/** Reads DSV3_TCP_SAME_HOST (unset: 'unix'). */
export function sameHostFromEnv(value: string | undefined): SameHostPath {
  if (value === undefined || value === '') return 'unix';
  if (value === 'unix' || value === 'tcp') return value;
  throw new Error(
    `DSV3_TCP_SAME_HOST=${JSON.stringify(value)}: expected unix (peers on this host over a Unix domain socket, the default) or tcp (over loopback TCP like any peer)`,
  );
}
