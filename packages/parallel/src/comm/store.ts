// The rendezvous key-value store (c10d's TCPStore): rank 0 hosts it at MASTER_ADDR:MASTER_PORT, every
// rank connects as a client. set / get (blocks until the key exists) / add (atomic counter) / wait /
// check / compareSet / delete, as newline-delimited JSON over TCP. Values are strings.
import net from 'node:net';

interface Request {
  id: number;
  op: 'set' | 'get' | 'add' | 'wait' | 'check' | 'compareSet' | 'delete';
  key?: string;
  keys?: string[];
  value?: string;
  expected?: string;
  delta?: number;
}

interface Response {
  id: number;
  value?: string | null;
  ok?: boolean;
  error?: string;
}

/** Splits a socket's text into lines. */
function onLines(sock: net.Socket, handle: (line: string) => void): void {
  let buf = '';
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line) handle(line);
    }
  });
}

export class StoreServer {
  private readonly data = new Map<string, string>();
  private readonly waiters: { keys: string[]; done: () => void }[] = [];
  private readonly sockets = new Set<net.Socket>();

  private constructor(private readonly server: net.Server) {}

  /** Listens on `port` (0: any free port) of `host` (default: every interface). */
  static listen(port: number, host = '0.0.0.0'): Promise<StoreServer> {
    return new Promise((resolve, reject) => {
      const server = net.createServer();
      const store = new StoreServer(server);
      server.on('connection', (s) => store.serve(s));
      server.once('error', (e: NodeJS.ErrnoException) =>
        reject(
          new Error(
            `rank 0 could not host the rendezvous store on ${host}:${port}: ${e.code === 'EADDRINUSE' ? 'the port is in use (set MASTER_PORT to a free one)' : e.message}`,
          ),
        ),
      );
      server.listen(port, host, () => resolve(store));
    });
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  private serve(sock: net.Socket): void {
    this.sockets.add(sock);
    sock.on('close', () => this.sockets.delete(sock));
    sock.on('error', () => undefined); // a client that vanishes must not take the store down
    onLines(sock, (line) => {
      let req: Request;
      try {
        req = JSON.parse(line) as Request;
        if (typeof req.id !== 'number' || typeof req.op !== 'string') throw new Error('bad request');
      } catch {
        sock.end(`${JSON.stringify({ id: -1, error: 'malformed store request' })}\n`);
        return;
      }
      const reply = (r: Omit<Response, 'id'>) => {
        if (!sock.destroyed) sock.write(`${JSON.stringify({ id: req.id, ...r })}\n`);
      };
      this.handle(req, reply);
    });
  }

  private handle(req: Request, reply: (r: Omit<Response, 'id'>) => void): void {
    const key = String(req.key ?? '');
    switch (req.op) {
      case 'set':
        this.data.set(key, String(req.value ?? ''));
        this.wake();
        return reply({ ok: true });
      case 'get':
        return this.whenPresent([key], () => reply({ value: this.data.get(key)! }));
      case 'wait':
        return this.whenPresent((req.keys ?? []).map(String), () => reply({ ok: true }));
      case 'check':
        return reply({ ok: (req.keys ?? []).every((k) => this.data.has(String(k))) });
      case 'add': {
        const v = Number(this.data.get(key) ?? '0') + Number(req.delta ?? 0);
        this.data.set(key, String(v));
        this.wake();
        return reply({ value: String(v) });
      }
      case 'compareSet': {
        const cur = this.data.get(key);
        if ((cur === undefined && (req.expected ?? '') === '') || cur === req.expected)
          this.data.set(key, String(req.value ?? ''));
        this.wake();
        return reply({ value: this.data.get(key) ?? null });
      }
      case 'delete':
        return reply({ ok: this.data.delete(key) });
      default:
        return reply({ error: `unknown store operation ${JSON.stringify(req.op)}` });
    }
  }

  private whenPresent(keys: string[], done: () => void): void {
    if (keys.every((k) => this.data.has(k))) return done();
    this.waiters.push({ keys, done });
  }

  private wake(): void {
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i]!;
      if (w.keys.every((k) => this.data.has(k))) {
        this.waiters.splice(i, 1);
        w.done();
      }
    }
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

export class StoreClient {
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (r: Response) => void; reject: (e: Error) => void; timer: ReturnType<typeof setTimeout> }
  >();
  private closed = false;

  private constructor(
    private readonly sock: net.Socket,
    readonly where: string,
    private readonly timeoutMs: number,
  ) {
    onLines(sock, (line) => {
      const r = JSON.parse(line) as Response;
      const p = this.pending.get(r.id);
      if (!p) return;
      this.pending.delete(r.id);
      clearTimeout(p.timer);
      if (r.error) p.reject(new Error(`rendezvous store at ${where}: ${r.error}`));
      else p.resolve(r);
    });
    const lost = () => {
      if (this.closed) return;
      this.closed = true;
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new Error(`lost the connection to the rendezvous store at ${where} (rank 0 hosts it: did it exit?)`));
      }
      this.pending.clear();
    };
    sock.on('close', lost);
    sock.on('error', lost);
  }

  /** Connects, retrying until `timeoutMs` (rank 0 may start after the others). */
  static async connect(host: string, port: number, timeoutMs: number): Promise<StoreClient> {
    const where = `${host}:${port}`;
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect({ host, port });
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        sock.setNoDelay(true);
        return new StoreClient(sock, where, timeoutMs);
      } catch (e) {
        last = (e as Error).message;
      }
      if (Date.now() > deadline)
        throw new Error(
          `could not reach the rendezvous store at ${where} within ${timeoutMs} ms (rank 0 hosts it; last error: ${last})`,
        );
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** The local address this client reaches the store from (an address peers can reach this host at). */
  get localAddress(): string {
    return this.sock.localAddress ?? '127.0.0.1';
  }

  private request(req: Omit<Request, 'id'>, what: string): Promise<Response> {
    if (this.closed) return Promise.reject(new Error(`the rendezvous store connection to ${this.where} is closed`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`rendezvous store at ${this.where}: ${what} did not complete within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.sock.write(`${JSON.stringify({ id, ...req })}\n`);
    });
  }

  async set(key: string, value: string): Promise<void> {
    await this.request({ op: 'set', key, value }, `set(${key})`);
  }
  /** Blocks until the key exists. */
  async get(key: string): Promise<string> {
    return (await this.request({ op: 'get', key }, `get(${key})`)).value!;
  }
  async add(key: string, delta: number): Promise<number> {
    return Number((await this.request({ op: 'add', key, delta }, `add(${key})`)).value);
  }
  async wait(keys: string[]): Promise<void> {
    await this.request({ op: 'wait', keys }, `wait(${keys.join(', ')})`);
  }
  async check(keys: string[]): Promise<boolean> {
    return (await this.request({ op: 'check', keys }, 'check')).ok === true;
  }
  /** Sets `key` to `desired` if it holds `expected` ('' for absent); returns the value it then holds. */
  async compareSet(key: string, expected: string, desired: string): Promise<string | null> {
    return (
      (await this.request({ op: 'compareSet', key, expected, value: desired }, `compareSet(${key})`)).value ?? null
    );
  }
  async delete(key: string): Promise<boolean> {
    return (await this.request({ op: 'delete', key }, `delete(${key})`)).ok === true;
  }

  close(): void {
    this.closed = true;
    this.sock.destroy();
  }
}
