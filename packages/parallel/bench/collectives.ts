// Collective bus bandwidth (nccl-tests' definition) per transport, 2 and 4 ranks, 4 KiB - 256 MiB,
// against two anchors measured in the same run: torch.distributed's gloo backend doing the same
// collectives, and the machine's limit (memcpy for local, one raw socket stream for tcp: a Unix one,
// which is what the tcp transport's ranks of one host use, and a TCP one, what `tcp-loopback` — the
// tcp transport with DSV3_TCP_SAME_HOST=tcp — and gloo use). Each rank count
// runs `--rounds` rounds, every round launching gloo and each transport once, in alternating order
// (gloo first in odd rounds, last in even ones); a cell is the median over the rounds, and its ratio
// the median of the per-round ratios to gloo, so one descheduled run decides nothing.
//   npm run bench -w @dsv3/parallel -- [--min-kib 4] [--max-mib 256] [--ranks 2,4]
//     [--transports local,tcp,tcp-loopback,mpi]
//     [--rounds 3] [--min-seconds 0.2]
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { launchLocal } from '../src/index.js';
import { mpiAvailable } from '../src/comm/mpi.js';
import { unixSocketPath } from '../src/comm/same-host.js';

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : dflt;
};
const maxBytes = Number(arg('max-mib', '256')) * 2 ** 20;
const minBytes = Number(arg('min-kib', '4')) * 1024;
const rankCounts = arg('ranks', '2,4').split(',').map(Number);
const transports = arg('transports', 'local,tcp,tcp-loopback,mpi').split(',');
const python = arg('python', process.env.DSV3_PYTHON ?? '/work/venv/bin/python');
const minSeconds = arg('min-seconds', '0.2');
const rounds = Number(arg('rounds', '3'));
if (!(Number.isInteger(rounds) && rounds >= 1)) throw new Error(`--rounds ${rounds}: expected a positive integer`);
const sizes: number[] = [];
for (let b = 4096; b <= maxBytes; b *= 4) if (b >= minBytes) sizes.push(b);
const pkg = fileURLToPath(new URL('..', import.meta.url));
const rankScript = fileURLToPath(new URL('./ranks/collectives.ts', import.meta.url));
const env = { BENCH_SIZES: sizes.join(','), BENCH_MIN_SECONDS: minSeconds };

type Row = { op: string; bytes: number; seconds: number; iters: number };

function collect(cmd: string, args: string[], extraEnv: Record<string, string> = {}): Promise<Row[]> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, {
      cwd: pkg,
      env: { ...process.env, ...env, ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    c.on('close', (code) => {
      const m = /BENCH (.*)$/m.exec(out);
      if (code !== 0 || !m) reject(new Error(`${cmd} ${args.join(' ')} failed (${code}):\n${out.slice(-3000)}`));
      else resolve(JSON.parse(m[1]!) as Row[]);
    });
  });
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

const tsx = [process.execPath, '--import', 'tsx', '--conditions=@dsv3/source'];
/** The tcp transport's ranks as processes under dsv3-run, same-host peers over `sameHost`. */
const underLauncher = (n: number, sameHost: 'unix' | 'tcp') =>
  collect(
    tsx[0]!,
    [
      ...tsx.slice(1),
      fileURLToPath(new URL('../src/launcher/cli.ts', import.meta.url)),
      '--nproc',
      String(n),
      rankScript,
    ],
    { DSV3_TCP_SAME_HOST: sameHost },
  );
const runners: Record<string, (n: number) => Promise<Row[]>> = {
  local: async (n) => {
    Object.assign(process.env, env);
    const res = await launchLocal({ nproc: n, script: rankScript });
    const r = res.find((x) => x.rank === 0);
    if (r?.exitCode !== 0) throw new Error(`local bench failed: ${res.map((x) => x.error?.message).join('; ')}`);
    return r.result as Row[];
  },
  tcp: (n) => underLauncher(n, 'unix'),
  'tcp-loopback': (n) => underLauncher(n, 'tcp'),
  mpi: (n) => collect('mpirun', ['--allow-run-as-root', '--oversubscribe', '-np', String(n), ...tsx, rankScript]),
  gloo: async (n) =>
    collect(python, [
      fileURLToPath(new URL('./gloo.py', import.meta.url)),
      String(n),
      String(await freePort()),
      sizes.join(','),
      minSeconds,
    ]),
};

/** memcpy bandwidth (one copy of `bytes`), the local transport's ceiling. */
function memcpyGBs(bytes: number): number {
  bytes = Math.min(bytes, 2 ** 26);
  const a = new Uint8Array(bytes).fill(1);
  const b = new Uint8Array(bytes);
  const iters = Math.max(3, Math.ceil(2 ** 28 / bytes));
  b.set(a);
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) b.set(a);
  return (bytes * iters) / ((performance.now() - t0) / 1000) / 1e9;
}

/** One raw stream between two Node processes (4 MiB writes, no framing) over loopback TCP or a Unix
 *  socket, in GB/s: the most a Node socket of that kind moves on this machine. The receiver dials and
 *  reads with `onread` into one 4 MiB buffer, as the tcp transport does (Node's default 'data' events
 *  read 64 KiB at a time, which measured 10x slower here: that, not the socket, was what an earlier
 *  version of this anchor timed). */
async function socketGBs(kind: 'tcp' | 'unix'): Promise<number> {
  const total = 2 ** 28;
  const chunk = Buffer.alloc(2 ** 22, 1);
  let t0 = 0;
  const server = net.createServer();
  const done = new Promise<number>((resolve) =>
    server.on('connection', async (sock) => {
      t0 = performance.now();
      for (let sent = 0; sent < total; sent += chunk.length)
        if (!sock.write(chunk)) await new Promise((r) => sock.once('drain', r));
      await new Promise((r) => sock.once('data', r));
      resolve(total / ((performance.now() - t0) / 1000) / 1e9);
      sock.destroy();
    }),
  );
  let target: string;
  if (kind === 'unix') {
    const path = unixSocketPath(`bench${process.pid}`, 0);
    await new Promise<void>((r) => server.listen(path, r));
    target = `path: ${JSON.stringify(path)}`;
  } else {
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    target = `port: ${(server.address() as net.AddressInfo).port}, host: '127.0.0.1'`;
  }
  const sink = spawn(
    process.execPath,
    [
      '-e',
      `const net = require('node:net'); let got = 0;
    const s = net.connect({ ${target}, onread: { buffer: Buffer.allocUnsafe(${2 ** 22}),
      callback: (n) => { got += n; if (got >= ${total}) s.end('k'); return true; } } });`,
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const gbs = await done;
  sink.kill();
  server.close();
  return gbs;
}

const busFactor = (op: string, n: number) => (op === 'allreduce' ? (2 * (n - 1)) / n : (n - 1) / n);
const fmtBytes = (b: number) => (b >= 2 ** 20 ? `${b / 2 ** 20} MiB` : `${b / 1024} KiB`);

const hasMpi = spawnSync('mpirun', ['--version'], { stdio: 'ignore' }).status === 0 && mpiAvailable();
const hasGloo =
  spawnSync(python, ['-c', 'import torch.distributed as d; assert d.is_gloo_available()'], { stdio: 'ignore' })
    .status === 0;
if (!hasGloo) console.warn(`[bench] no torch with gloo at ${python}: the gloo anchor is skipped (pass --python)`);

const memcpy = new Map(sizes.map((b) => [b, memcpyGBs(b)]));
for (const kind of ['tcp', 'unix'] as const)
  console.log(
    `raw ${kind === 'tcp' ? 'TCP stream over loopback' : 'Unix socket stream'} (Node, 4 MiB writes, onread into 4 MiB): ${(await socketGBs(kind)).toFixed(3)} GB/s`,
  );

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const started = performance.now();
const behind: string[] = [];

for (const n of rankCounts) {
  const names = [...(hasGloo ? ['gloo'] : []), ...transports.filter((t) => t !== 'mpi' || hasMpi)];
  /** Per runner, per round: its rows. */
  const results: Record<string, Row[][]> = Object.fromEntries(names.map((x) => [x, []]));
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? names : [...names.slice(1), names[0]!];
    for (const name of order) {
      process.stderr.write(`[bench] round ${round + 1}/${rounds}: ${name} with ${n} ranks...\n`);
      results[name]!.push(await runners[name]!(n));
    }
  }
  const seconds = (name: string, op: string, b: number) =>
    results[name]!.map((rows) => rows.find((x) => x.op === op && x.bytes === b)!.seconds);
  for (const op of ['allreduce', 'alltoall']) {
    console.log(`\n${op}, ${n} ranks: bus bandwidth GB/s, median of ${rounds} rounds (median ratio to gloo)`);
    console.log(`| size | ${names.join(' | ')} | memcpy |`);
    console.log(`|---|${names.map(() => '---:').join('|')}|---:|`);
    for (const b of sizes) {
      const bus = (s: number) => (b / s / 1e9) * busFactor(op, n);
      const gloo = hasGloo ? seconds('gloo', op, b) : null;
      const cells = names.map((name) => {
        const t = seconds(name, op, b);
        const bw = bus(median(t)).toFixed(3);
        if (name === 'gloo' || !gloo) return bw;
        const ratios = t.map((s, i) => gloo[i]! / s); // same round, so the same minutes of the machine
        const ratio = median(ratios);
        if (ratio < 1 && b >= 64 << 10)
          behind.push(
            `${name} ${op} ${n} ranks ${fmtBytes(b)}: ${ratio.toFixed(2)}x (rounds: ${ratios.map((x) => x.toFixed(2)).join(', ')})`,
          );
        return `${bw} (${ratio.toFixed(2)}x)`;
      });
      console.log(`| ${fmtBytes(b)} | ${cells.join(' | ')} | ${memcpy.get(b)!.toFixed(2)} |`);
    }
  }
}
if (hasGloo)
  console.log(`\nBehind gloo from 64 KiB (median ratio < 1): ${behind.length ? `\n- ${behind.join('\n- ')}` : 'none'}`);
console.log(
  `\n(${rounds} rounds, --min-seconds ${minSeconds}, ${((performance.now() - started) / 1000).toFixed(0)} s)`,
);
