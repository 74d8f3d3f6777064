// Issue 15 asks to choose the tcp transport's library by measurement: one-direction streams of 256 MiB
// in 4 MiB messages between two processes over loopback, with Node's net (default 'data' reads, and
// `onread` into one 4 MiB buffer as the tcp transport reads; and the same over a Unix domain socket, as
// the tcp transport's ranks of one host talk) and with zeromq (PUSH/PULL, the library
// vLLM and SGLang use). zeromq is not a dependency of dsv3: install it anywhere Node can resolve it
// (`npm i --no-save zeromq@6`; 6.x ships prebuilt binaries) or its rows are skipped.
//   cd packages/parallel && npx tsx bench/tcp-streams.ts [--reps 2]      (pin with taskset -c 1 to compare on one core)
import { spawn } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { unixSocketPath } from '../src/comm/same-host.js';

const TOTAL = 2 ** 28;
const CHUNK = 2 ** 22;
const here = fileURLToPath(import.meta.url);
type Mode = 'net-data' | 'net-onread' | 'net-unix' | 'zeromq';
/** net-unix's socket (an abstract one on Linux, as the tcp transport's ranks of one host use), named by
 *  the sending process's id, which the receiving child gets as its argument. */
const unixPath = (pid: string) => unixSocketPath(`streams${pid}`, 0);

// biome-ignore lint/suspicious/noExplicitAny: zeromq is optional, so it has no types here
async function zeromq(): Promise<any | null> {
  const name = 'zeromq';
  try {
    return await import(name);
  } catch {
    return null;
  }
}

const cpuMs = (since: NodeJS.CpuUsage) => {
  const c = process.cpuUsage(since);
  return (c.user + c.system) / 1e3;
};

/** The child's side: receives TOTAL bytes from `where` (a port, or for net-unix the sender's pid), then answers
 *  with the CPU milliseconds it spent. */
async function receive(mode: Mode, where: string): Promise<void> {
  let got = 0;
  if (mode === 'zeromq') {
    const z = await zeromq();
    const s = new z.Pull();
    s.connect(`tcp://127.0.0.1:${where}`);
    for await (const [m] of s) {
      got += (m as Buffer).length;
      if (got >= TOTAL) break;
    }
    process.stdout.write('done\n');
    s.close();
    return;
  }
  const cpu0 = process.cpuUsage();
  const target = mode === 'net-unix' ? { path: unixPath(where) } : { port: Number(where), host: '127.0.0.1' };
  const s =
    mode === 'net-data'
      ? net.connect(target)
      : net.connect({
          ...target,
          onread: {
            buffer: Buffer.allocUnsafe(CHUNK),
            callback: (n: number) => {
              got += n;
              if (got >= TOTAL) s.end(String(cpuMs(cpu0)));
              return true;
            },
          },
        });
  if (mode === 'net-data')
    s.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= TOTAL) s.end(String(cpuMs(cpu0)));
    });
}

interface StreamResult {
  gbs: number;
  /** CPU ms per GiB moved: the sender's and the receiver's (net modes only). */
  sendCpu?: number;
  recvCpu?: number;
}

/** One stream: this process sends, a child receives. */
async function stream(mode: Mode): Promise<StreamResult> {
  const chunk = Buffer.alloc(CHUNK, 1);
  const child = (where: string) =>
    spawn(process.execPath, [...process.execArgv, here, '--recv', mode, where], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
  if (mode === 'zeromq') {
    const z = await zeromq();
    const s = new z.Push();
    await s.bind('tcp://127.0.0.1:0');
    const c = child(/:(\d+)$/.exec(s.lastEndpoint as string)![1]!);
    await new Promise((r) => setTimeout(r, 300));
    const t0 = performance.now();
    for (let sent = 0; sent < TOTAL; sent += CHUNK) await s.send(chunk);
    await new Promise((r) => c.stdout!.once('data', r));
    const gbs = TOTAL / ((performance.now() - t0) / 1e3) / 1e9;
    s.close();
    return { gbs };
  }
  const server = net.createServer();
  const perGiB = 2 ** 30 / TOTAL;
  const done = new Promise<StreamResult>((resolve) =>
    server.on('connection', async (sock) => {
      const t0 = performance.now();
      const cpu0 = process.cpuUsage();
      for (let sent = 0; sent < TOTAL; sent += CHUNK)
        if (!sock.write(chunk)) await new Promise((r) => sock.once('drain', r));
      const sendCpu = cpuMs(cpu0);
      const answer = await new Promise<Buffer>((r) => sock.once('data', r));
      resolve({
        gbs: TOTAL / ((performance.now() - t0) / 1e3) / 1e9,
        sendCpu: sendCpu * perGiB,
        recvCpu: Number(answer.toString()) * perGiB,
      });
      sock.destroy();
    }),
  );
  let where: string;
  if (mode === 'net-unix') {
    where = String(process.pid);
    await new Promise<void>((r) => server.listen(unixPath(where), r));
  } else {
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    where = String((server.address() as net.AddressInfo).port);
  }
  const c = child(where);
  const result = await done;
  c.kill();
  server.close();
  return result;
}

const i = process.argv.indexOf('--recv');
if (i > 0) await receive(process.argv[i + 1] as Mode, process.argv[i + 2]!);
else {
  const r = process.argv.indexOf('--reps');
  const reps = r > 0 ? Number(process.argv[r + 1]) : 2;
  const modes: Mode[] = ['net-data', 'net-onread', 'net-unix', ...((await zeromq()) ? (['zeromq'] as const) : [])];
  if (!modes.includes('zeromq'))
    console.warn('zeromq is not installed: its rows are skipped (npm i --no-save zeromq@6)');
  const results: Record<string, StreamResult[]> = {};
  for (let k = 0; k < reps; k++) for (const m of modes) (results[m] ??= []).push(await stream(m)); // interleaved
  const list = (r: StreamResult[], key: keyof StreamResult, digits: number) =>
    r.map((x) => x[key]?.toFixed(digits) ?? '–').join(', ');
  console.log(
    '| stream (256 MiB in 4 MiB messages, one host) | GB/s per repetition | CPU ms per GiB: sender | receiver |',
  );
  console.log('|---|---|---|---|');
  for (const m of modes) {
    const r = results[m]!;
    const cells = [list(r, 'gbs', 3), list(r, 'sendCpu', 0), list(r, 'recvCpu', 0)];
    console.log(`| ${m} | ${cells.join(' | ')} |`);
  }
}
