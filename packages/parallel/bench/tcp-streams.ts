// Issue 15 asks to choose the tcp transport's library by measurement: one-direction streams of 256 MiB
// in 4 MiB messages between two processes over loopback, with Node's net (default 'data' reads, and
// `onread` into one 4 MiB buffer as the tcp transport reads) and with zeromq (PUSH/PULL, the library
// vLLM and SGLang use). zeromq is not a dependency of dsv3: install it anywhere Node can resolve it
// (`npm i --no-save zeromq@6`; 6.x ships prebuilt binaries) or its rows are skipped.
//   cd packages/parallel && npx tsx bench/tcp-streams.ts [--reps 2]      (pin with taskset -c 1 to compare on one core)
import { spawn } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const TOTAL = 2 ** 28;
const CHUNK = 2 ** 22;
const here = fileURLToPath(import.meta.url);
type Mode = 'net-data' | 'net-onread' | 'zeromq';

// biome-ignore lint/suspicious/noExplicitAny: zeromq is optional, so it has no types here
async function zeromq(): Promise<any | null> {
  const name = 'zeromq';
  try {
    return await import(name);
  } catch {
    return null;
  }
}

async function receive(mode: Mode, port: number): Promise<void> {
  let got = 0;
  if (mode === 'zeromq') {
    const z = await zeromq();
    const s = new z.Pull();
    s.connect(`tcp://127.0.0.1:${port}`);
    for await (const [m] of s) {
      got += (m as Buffer).length;
      if (got >= TOTAL) break;
    }
    process.stdout.write('done\n');
    s.close();
    return;
  }
  const s =
    mode === 'net-onread'
      ? net.connect({
          port,
          host: '127.0.0.1',
          onread: {
            buffer: Buffer.allocUnsafe(CHUNK),
            callback: (n: number) => {
              got += n;
              if (got >= TOTAL) s.end('k');
              return true;
            },
          },
        })
      : net.connect(port, '127.0.0.1');
  if (mode === 'net-data')
    s.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= TOTAL) s.end('k');
    });
}

/** GB/s of one stream: this process sends, a child receives. */
async function stream(mode: Mode): Promise<number> {
  const chunk = Buffer.alloc(CHUNK, 1);
  const child = (port: number) =>
    spawn(process.execPath, [...process.execArgv, here, '--recv', mode, String(port)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
  if (mode === 'zeromq') {
    const z = await zeromq();
    const s = new z.Push();
    await s.bind('tcp://127.0.0.1:0');
    const c = child(Number(/:(\d+)$/.exec(s.lastEndpoint as string)![1]));
    await new Promise((r) => setTimeout(r, 300));
    const t0 = performance.now();
    for (let sent = 0; sent < TOTAL; sent += CHUNK) await s.send(chunk);
    await new Promise((r) => c.stdout!.once('data', r));
    const gbs = TOTAL / ((performance.now() - t0) / 1e3) / 1e9;
    s.close();
    return gbs;
  }
  const server = net.createServer();
  const done = new Promise<number>((resolve) =>
    server.on('connection', async (sock) => {
      const t0 = performance.now();
      for (let sent = 0; sent < TOTAL; sent += CHUNK)
        if (!sock.write(chunk)) await new Promise((r) => sock.once('drain', r));
      await new Promise((r) => sock.once('data', r));
      resolve(TOTAL / ((performance.now() - t0) / 1e3) / 1e9);
      sock.destroy();
    }),
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const c = child((server.address() as net.AddressInfo).port);
  const gbs = await done;
  c.kill();
  server.close();
  return gbs;
}

const i = process.argv.indexOf('--recv');
if (i > 0) await receive(process.argv[i + 1] as Mode, Number(process.argv[i + 2]));
else {
  const r = process.argv.indexOf('--reps');
  const reps = r > 0 ? Number(process.argv[r + 1]) : 2;
  const modes: Mode[] = ['net-data', 'net-onread', ...((await zeromq()) ? (['zeromq'] as const) : [])];
  if (!modes.includes('zeromq'))
    console.warn('zeromq is not installed: its rows are skipped (npm i --no-save zeromq@6)');
  const results: Record<string, number[]> = {};
  for (let k = 0; k < reps; k++) for (const m of modes) (results[m] ??= []).push(await stream(m)); // interleaved
  console.log('| stream (256 MiB in 4 MiB messages, loopback) | GB/s per repetition |');
  console.log('|---|---|');
  for (const m of modes) console.log(`| ${m} | ${results[m]!.map((x) => x.toFixed(3)).join(', ')} |`);
}
