// The `tcp` transport: a full mesh of stream connections (Node's net), addresses exchanged through the
// rendezvous store: TCP between hosts, a Unix domain socket between ranks of one host (same framing,
// no TCP/IP stack; `sameHost: 'tcp'` or DSV3_TCP_SAME_HOST=tcp keeps those on loopback TCP too).
// Every ordered pair of ranks has its own connection, dialed by the receiver: a
// dialed socket can read with `onread` into one large reusable buffer (an accepted one cannot), which
// moves several times more bytes per CPU second than Node's default 64 KiB reads, and the reads of a
// large payload go straight into its destination (a function as `onread.buffer` picks each read's
// target), so a byte is copied only by the kernel. A hello carrying the
// job token and rank identifies each link. A clean destroy sends a goodbye, an abort sends its reason,
// and a link that drops without either fails the group naming that rank.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { PeerFailure } from './errors.js';
import { hostIdentity, unixSocketPath, type SameHostPath } from './same-host.js';
import type { StoreClient } from './store.js';
import { StreamTransport } from './transport.js';
import { CONTROL_ABORT, CONTROL_BYE, KIND_CONTROL, StreamParser, encodeHeader } from './wire.js';

const HELLO_BYTES = 32;
const MAGIC = 0x64737633; // 'dsv3'
/**
 * A receiving link reads at most this much into its own buffer (headers, small messages, the first
 * bytes of a large payload, copied out by the parser); once at least this much of a payload is left,
 * the rest is read straight into the payload's destination.
 */
const READ_BUFFER_BYTES = 64 << 10;
/**
 * How long at most a link holds a large message at its header for its receive to be posted before
 * reading it into a buffer of its own. Holding is what lets a peer that runs ahead send into place
 * (the collectives bench, 16-256 MiB at 4 ranks, never reached this limit). A receive posted meanwhile
 * for another message from that peer, which may be queued behind the held one, ends the hold at once;
 * the limit is for programs that wait for the send to complete before posting anything.
 */
const HOLD_MS = 100;

export interface TcpOptions {
  /** Interface to listen on (default every interface). */
  bindAddr?: string;
  /** The address peers dial for this rank (default: the one this host reaches the store from). */
  advertiseAddr?: string;
  /** How long to wait for every peer to connect. */
  connectTimeoutMs: number;
  /** How peers on this host are reached (default 'unix'; see same-host.ts). */
  sameHost?: SameHostPath;
}

/** What a rank publishes in the store: its TCP address and, where it listens on one, its Unix socket. */
interface RankAddress {
  host: string;
  port: number;
  local?: { id: string; path: string };
}

function hello(token: Buffer, rank: number, size: number): Buffer {
  const h = Buffer.alloc(HELLO_BYTES);
  h.writeUInt32LE(MAGIC, 0);
  h.writeUInt32LE(rank, 4);
  h.writeUInt32LE(size, 8);
  token.copy(h, 16, 0, 16);
  return h;
}

export class TcpTransport extends StreamTransport {
  readonly kind = 'tcp' as const;
  /** Accepted from each peer: this rank writes to the peer on it. */
  private readonly sendLinks: (net.Socket | null)[];
  /** Dialed to each peer: this rank reads what the peer sends on it. */
  private readonly recvLinks: (net.Socket | null)[];
  /** How the link from each peer was dialed (null: this rank, or not connected yet). */
  private readonly paths: (SameHostPath | null)[];
  private readonly cleanlyClosed = new Set<number>();
  /** The TCP listener, then the Unix one where same-host peers dial it; closed once the mesh is up. */
  private readonly servers: net.Server[] = [];
  /** Takes a connection from a listener until every peer has said hello. */
  private accepting: ((sock: net.Socket) => void) | null = null;
  private stopping = false;

  private constructor(rank: number, size: number) {
    super(rank, size);
    this.sendLinks = new Array<net.Socket | null>(size).fill(null);
    this.recvLinks = new Array<net.Socket | null>(size).fill(null);
    this.paths = new Array<SameHostPath | null>(size).fill(null);
  }

  /** How this rank reads from each peer: 'unix' or 'tcp' (null for itself). */
  links(): readonly (SameHostPath | null)[] {
    return this.paths;
  }

  /** Rendezvous through the store, then connect the mesh. */
  static async connect(store: StoreClient, rank: number, size: number, opts: TcpOptions): Promise<TcpTransport> {
    const t = new TcpTransport(rank, size);
    if (rank === 0) await store.set('dsv3/token', randomBytes(16).toString('hex'));
    const tokenHex = await store.get('dsv3/token');
    const token = Buffer.from(tokenHex, 'hex');
    const accepted = t.acceptPeers(token);
    const tcpServer = await t.serve((s) => s.listen(0, opts.bindAddr ?? '0.0.0.0'));
    const self: RankAddress = {
      host: opts.advertiseAddr ?? store.localAddress,
      port: (tcpServer.address() as net.AddressInfo).port,
    };
    // Same-host peers are only looked for where they are wanted (reading /proc once).
    const hostId = (opts.sameHost ?? 'unix') === 'unix' ? hostIdentity() : null;
    if (hostId && size > 1) {
      const path = unixSocketPath(tokenHex.slice(0, 16), rank);
      try {
        await t.serve((s) => s.listen(path));
        self.local = { id: hostId, path };
      } catch {
        // No Unix listener (a platform or sandbox that refuses one): peers simply dial over TCP.
      }
    }
    await store.set(`dsv3/addr/${rank}`, JSON.stringify(self));
    const dials: Promise<void>[] = [];
    for (let peer = 0; peer < size; peer++)
      if (peer !== rank)
        dials.push(
          store.get(`dsv3/addr/${peer}`).then((a) => {
            const addr = JSON.parse(a) as RankAddress;
            const local = hostId && addr.local?.id === hostId ? addr.local.path : null;
            return t.dial(peer, addr, local, token, opts.connectTimeoutMs);
          }),
        );
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const missing = t.sendLinks.flatMap((l, r) => (l || r === rank ? [] : [r]));
        reject(
          new Error(`rank ${rank}: ranks ${missing.join(', ')} did not connect within ${opts.connectTimeoutMs} ms`),
        );
      }, opts.connectTimeoutMs);
    });
    try {
      await Promise.race([Promise.all([...dials, accepted]), timeout]);
    } catch (e) {
      await t.shutdown(true);
      throw e;
    } finally {
      clearTimeout(timer);
    }
    for (const s of t.servers) s.close(); // the mesh is complete; later dials would be strangers
    return t;
  }

  /** A listener that hands its connections to acceptPeers' handler; rejects if it cannot listen. */
  private serve(listen: (s: net.Server) => void): Promise<net.Server> {
    const server = net.createServer((sock) => (this.accepting ? this.accepting(sock) : sock.destroy()));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.once('listening', () => {
        server.off('error', reject);
        this.servers.push(server);
        resolve(server);
      });
      listen(server);
    });
  }

  /** Resolves once every peer has dialed in (on any of this rank's listeners) and said hello. */
  private acceptPeers(token: Buffer): Promise<void> {
    const expected = this.size - 1;
    if (expected === 0) return Promise.resolve();
    let got = 0;
    return new Promise((resolve) => {
      this.accepting = (sock) => {
        sock.on('error', () => undefined);
        let head = Buffer.alloc(0);
        const onData = (d: Buffer) => {
          head = Buffer.concat([head, d]);
          if (head.length < HELLO_BYTES) return;
          sock.off('data', onData);
          const peer = head.readUInt32LE(4);
          if (
            head.readUInt32LE(0) !== MAGIC ||
            head.readUInt32LE(8) !== this.size ||
            !head.subarray(16, 32).equals(token) ||
            peer === this.rank ||
            peer >= this.size ||
            this.sendLinks[peer]
          ) {
            sock.destroy(); // not one of this job's ranks (or a duplicate)
            return;
          }
          sock.setNoDelay(true);
          sock.setKeepAlive(true, 10_000);
          this.sendLinks[peer] = sock;
          // Nothing is read here after the hello; a close is noticed on the link the peer sends on.
          sock.on('close', () => (this.sendLinks[peer] = null));
          if (++got === expected) resolve();
        };
        sock.on('data', onData);
      };
    });
  }

  /** Dials `peer` (over its Unix socket `local` where given, falling back to TCP) and reads from it. */
  private async dial(
    peer: number,
    addr: RankAddress,
    local: string | null,
    token: Buffer,
    timeoutMs: number,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const parser = new StreamParser(
      peer,
      this.mailbox,
      (op, payload) => {
        if (op === CONTROL_BYE) this.cleanlyClosed.add(peer);
        else if (op === CONTROL_ABORT)
          this.mailbox.fail(new PeerFailure(peer, `aborted (${Buffer.from(payload).toString('utf8')})`));
      },
      READ_BUFFER_BYTES,
    );
    const readBuffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
    // Before each read: the rest of a large payload if one is arriving (read in place), else the link's buffer.
    const nextRead = () => parser.directTarget(READ_BUFFER_BYTES) ?? readBuffer;
    // The peer listens before it publishes its address, so a Unix socket that refuses us is one we
    // cannot reach (another mount or sandbox): TCP from then on.
    let path: SameHostPath = local ? 'unix' : 'tcp';
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          // A large message whose receive is not posted yet pauses the link until the receive is
          // posted (or one for another message from that peer, or HOLD_MS pass), so its payload can
          // still be read in place.
          const resumeWhenPosted = () => {
            let fired = false;
            const go = () => {
              if (fired) return;
              fired = true;
              clearTimeout(timer);
              cancel();
              if (s.destroyed) return;
              if (parser.resume()) s.resume();
              else resumeWhenPosted();
            };
            const timer = setTimeout(go, HOLD_MS);
            const cancel = this.mailbox.whenPosted(peer, go);
          };
          const s = net.connect({
            ...(path === 'unix' ? { path: local! } : { host: addr.host, port: addr.port }),
            onread: {
              buffer: nextRead,
              callback: (n: number, buf: Uint8Array) => {
                if (buf !== readBuffer) {
                  parser.advance(n);
                  return true;
                }
                if (parser.feed(buf.subarray(0, n))) return true; // copied out; the buffer is free again
                resumeWhenPosted();
                return false; // pauses the socket
              },
            },
          });
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        sock.setNoDelay(true);
        sock.setKeepAlive(true, 10_000);
        sock.write(hello(token, this.rank, this.size));
        this.recvLinks[peer] = sock;
        this.paths[peer] = path;
        sock.on('error', () => undefined); // 'close' follows and reports it
        sock.on('close', () => {
          this.recvLinks[peer] = null;
          if (this.stopping) return;
          if (this.cleanlyClosed.has(peer) && parser.idle)
            this.mailbox.closePeer(new PeerFailure(peer, 'closed its process group'));
          else this.mailbox.fail(new PeerFailure(peer, 'closed its connection (its process exited or was killed)'));
        });
        return;
      } catch (e) {
        if (path === 'unix') {
          path = 'tcp';
          continue;
        }
        if (Date.now() > deadline)
          throw new Error(
            `rank ${this.rank} could not connect to rank ${peer} at ${addr.host}:${addr.port}: ${(e as Error).message}`,
          );
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  protected write(peer: number, header: Uint8Array, payload: Uint8Array): Promise<void> {
    const sock = this.sendLinks[peer];
    if (!sock || sock.destroyed) return Promise.reject(new PeerFailure(peer, 'closed its connection'));
    // Corked, header and payload leave in one writev.
    sock.cork();
    sock.write(header);
    const done = new Promise<void>((resolve, reject) => {
      sock.write(payload, (err) =>
        err ? reject(new PeerFailure(peer, `closed its connection (${err.message})`)) : resolve(),
      );
    });
    sock.uncork();
    return done;
  }

  protected async shutdown(failed: boolean): Promise<void> {
    this.stopping = true;
    for (const s of this.servers) s.close();
    const reason = this.failure?.peer === this.rank ? this.failure.reason : 'its process group was aborted';
    const frame = encodeHeader(
      { group: 0, kind: KIND_CONTROL, op: failed ? CONTROL_ABORT : CONTROL_BYE, seq: 0, step: 0 },
      failed ? Buffer.byteLength(reason) : 0,
    );
    const end = (sock: net.Socket | null, farewell: boolean) =>
      new Promise<void>((resolve) => {
        if (!sock || sock.destroyed) return resolve();
        if (farewell) {
          sock.write(frame);
          if (failed) sock.write(Buffer.from(reason));
        }
        sock.end(() => resolve());
        setTimeout(() => {
          sock.destroy();
          resolve();
        }, 2000).unref();
      });
    await Promise.all([...this.sendLinks.map((s) => end(s, true)), ...this.recvLinks.map((s) => end(s, false))]);
  }
}
